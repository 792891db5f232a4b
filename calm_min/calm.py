"""Stage 2 of CALM: the next-vector language model (docs/method.md section 3).

Input: the K token embeddings of each chunk, concatenated and compressed (Linear(K d -> 2d) -> SiLU
-> Linear(2d -> d) -> LayerNorm); the backbone (RoPE over chunk positions); the energy head. The
hidden state at chunk position i predicts chunk i+1, whose target is the frozen autoencoder's
posterior N(mu, sigma^2), from which M fresh draws are compared with N head samples by the energy
loss (docs/method.md section 4). Generation takes one backbone step per K tokens: head sample -> frozen
decoder -> argmax -> K tokens fed back; below T = 1 it goes through the likelihood-free samplers.

K, l and the vocabulary are the autoencoder's: CALM reads them from it, so they cannot disagree.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .autoencoder import Autoencoder
from .backbone import Backbone, BackboneConfig, KVCache, TreeRollout, cache_length, init_weights
from .brierlm import NGRAM
from .device import decode_cache_dtype, decoding_step
from .energy_head import EnergyHead, energy_loss
from .flops import calm_per_token
from .sampling import (Sampler, batch_temperature_sample, check_temperature, exact_temperature_sample,
                       inverse_integer)



@dataclass
class CALMConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_blocks: int = 4
    noise_size: int = 64
    n_samples: int = 8           # N
    n_targets: int = 100         # M
    alpha: float = 1.0
    # extension beyond the paper (README, "Making CALM learn at small scale"); 0 gives the paper's method
    aux_ce: float = 0.0          # weight of an auxiliary next-chunk token cross-entropy on h (training only)

    @staticmethod
    def from_dict(d: dict) -> 'CALMConfig':
        # older files also hold K, l, V (now the AE's) and training-only settings of removed experiments
        known = {f.name for f in dataclasses.fields(CALMConfig)}
        d = {k: v for k, v in d.items() if k in known}
        return CALMConfig(**{**d, 'backbone': BackboneConfig(**d['backbone'])})


class CALM(nn.Module):
    kind = 'calm'

    def __init__(self, cfg: CALMConfig, ae: Autoencoder):
        super().__init__()
        self.cfg = cfg
        self.chunk_size = K = ae.cfg.chunk_size
        self.tokens_per_step = K
        d, V, l = cfg.backbone.n_embd, ae.cfg.vocab_size, ae.cfg.latent_size
        self.tok_emb = nn.Embedding(V, d)
        self.compress = nn.Sequential(nn.Linear(K * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d), nn.LayerNorm(d))
        self.tok_emb.apply(init_weights)
        self.compress.apply(init_weights)
        self.backbone = Backbone(cfg.backbone)
        self.head = EnergyHead(d, l, cfg.noise_size, cfg.head_blocks)
        # extension: a linear map h -> the next chunk's K token logits, trained with cross-entropy
        # beside the energy loss to teach the backbone; generation never uses it (likelihood-free)
        self.aux_head = nn.Linear(d, K * V) if cfg.aux_ce > 0 else None
        if self.aux_head is not None:
            self.aux_head.apply(init_weights)
        self.ae = ae
        self.ae.requires_grad_(False)
        self.ae.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.ae.eval()  # frozen: never token or latent dropout
        return self

    def train_window(self, block_size: int) -> int:
        """Tokens per training example: the block_size // K chunks of a block; the first L-1 are the
        input and each predicts the chunk after it."""
        return block_size // self.chunk_size * self.chunk_size

    def flops_per_token(self, context: int) -> dict:
        """Analytic FLOPs per token at `context` tokens of context (calm_min/flops.py): inference (one
        head sample and the decoder per chunk) and training (N samples, the targets' encoder)."""
        c = self.cfg
        return calm_per_token(c.backbone, self.ae.cfg, context // self.chunk_size, c.head_blocks, c.noise_size,
                              c.n_samples, c.n_targets, aux_ce=self.aux_head is not None)

    def chunks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) with T a multiple of K -> (B, T/K, K)."""
        K = self.chunk_size
        if tokens.shape[-1] % K:
            raise ValueError(f"CALM takes whole chunks: the sequence length {tokens.shape[-1]} is not a multiple "
                             f"of chunk_size={K}")
        return rearrange(tokens, 'b (l k) -> b l k', k=K)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks x (..., K) -> compressed input vectors (..., d)."""
        # a plain view rather than einops, whose parser dynamo would trace (and guard on) in the
        # compiled decoding step
        return self.compress(self.tok_emb(x).flatten(-2))                     # (..., K d) -> (..., d)

    def hidden(self, x: torch.Tensor, cache=None, pos=None, mask=None) -> torch.Tensor:
        """Chunks x (B, L, K) -> backbone hidden states (B, L, d); position i conditions chunk i+1.
        `cache`, `pos` and `mask` go to the backbone (see `Backbone.forward`)."""
        return self.backbone(self.embed(x), cache=cache, pos=pos, mask=mask)  # (B, L, d)

    # -- training objective ---------------------------------------------------------------------

    @torch.no_grad()
    def target_latents(self, chunks: torch.Tensor, generator: torch.Generator | None = None):
        """Target chunks (..., K) -> (M draws from their posterior (M, ..., l), the posterior mean mu)."""
        mu, log_sigma = self.ae.encode(chunks)                                # (..., l)
        return self.ae.sample_latent(mu.float(), log_sigma.float(), self.cfg.n_targets, generator), mu

    def energy(self, h: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None):
        """Hidden states h (..., d) and target draws y (M, ..., l) -> (energy loss per position (...),
        the N head samples (N, ..., l))."""
        samples = self.head(h, self.cfg.n_samples, generator)                 # (N, ..., l)
        return energy_loss(samples, y, self.cfg.alpha), samples

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x (B, T) tokens, whole chunks -> ({'hidden': (B, L, d)}, None). With targets (B, T), the
        chunks that follow x's chunks (x shifted by one chunk), also the head samples and the mean
        energy loss over the B * L predicted chunks (plus aux_ce times the auxiliary cross-entropy
        when that extension is on)."""
        h = self.hidden(self.chunks(x))                                       # (B, L, d)
        if targets is None:
            return {'hidden': h}, None
        if targets.shape != x.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of x {tuple(x.shape)}: "
                             f"the chunks that follow x's chunks")
        t = self.chunks(targets)                                              # (B, L, K)
        y, mu = self.target_latents(t, generator)                             # (M, B, L, l), (B, L, l)
        per_pos, samples = self.energy(h, y, generator)                       # (B, L), (N, B, L, l)
        loss = per_pos.mean()
        with torch.no_grad():
            mean_err = (samples.float().mean(0) - mu.float()).norm(dim=-1).mean()
        out = {'hidden': h, 'samples': samples, 'mean_err': mean_err}
        if self.aux_head is not None:
            logits = rearrange(self.aux_head(h), 'b l (k v) -> b l k v', k=self.chunk_size)  # (B, L, K, V)
            ce = F.cross_entropy(logits.float().flatten(0, -2), t.flatten())
            out.update(energy=loss.detach(), aux_ce=ce.detach())
            loss = loss + self.cfg.aux_ce * ce
        return out, loss

    # -- sampling -------------------------------------------------------------------------------

    def pad_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """Left-pad (B, T0) with end-of-text (the AE's mask/pad id) to a whole number of chunks
        (at least one): the model reads the padding as the end of a previous document."""
        K = self.chunk_size
        pad = (-prompt.shape[1]) % K or (K if prompt.shape[1] == 0 else 0)
        fill = torch.full((prompt.shape[0], pad), self.ae.cfg.mask_id, dtype=prompt.dtype, device=prompt.device)
        return torch.cat([fill, prompt], 1)

    def sample_chunks(self, h: torch.Tensor, n: int, sampler: Sampler = Sampler(),
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Hidden states h (..., d) -> n independent next chunks per position (n, ..., K), each drawn
        from the model's distribution at the sampler's temperature: at T = 1 one head sample decoded
        by argmax; below, Algorithm 2 ('batch', a pool of num_candidates per chunk) or Algorithm 1
        ('exact') over decoded head samples."""
        T = sampler.temperature
        if T == 1.0:
            return self.ae.decode(self.head(h, n, generator))                 # (n, ..., K)
        check_temperature(T)
        flat = h.reshape(-1, h.shape[-1])                                     # (R, d)
        out = []
        for _ in range(n):
            if sampler.method == 'batch':
                inverse_integer(T)
                rows = max(1, 2 ** 14 // sampler.num_candidates)             # bounds the decoder's memory
                parts = []
                for i in range(0, flat.shape[0], rows):
                    z = self.head(flat[i:i + rows], sampler.num_candidates, generator)  # (N, r, l)
                    pool = self.ae.decode(z).transpose(0, 1)                  # (r, N, K)
                    parts.append(batch_temperature_sample(pool, T, generator))
                out.append(torch.cat(parts))
            else:
                rows = []
                for hb in flat:
                    def draw(m, hb=hb):
                        return self.ae.decode(self.head(hb, m, generator))    # (m, K)
                    rows.append(exact_temperature_sample(draw, T, generator, sampler.max_draws)[0])
                out.append(torch.stack(rows))
        return torch.stack(out).view(n, *h.shape[:-1], self.chunk_size)       # (n, ..., K)

    def decode_step(self, chunk: torch.Tensor, cache: KVCache, eps: torch.Tensor) -> torch.Tensor:
        """One decoding step at T = 1: the last chunk (B, K) and the head's input noise eps
        (1, B, noise_size) -> the next chunk (B, K): backbone step, one head sample, AE decoder (argmax).
        `cache` advances by one position. With a StaticKVCache every step has the same shapes, so the
        step compiles to one graph (`generate(compile=True)`)."""
        h = self.hidden(chunk[:, None], cache)[:, -1]                         # (B, d)
        return self.ae.decode(self.head.transform(h, eps))[0]                 # (B, K)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, sampler: Sampler = Sampler(),
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 compile: bool | str = False) -> torch.Tensor:
        """prompt (B, T0) -> (B, T0 + max_new_tokens). The prompt is left-padded to whole chunks
        (`pad_prompt`, padding removed from the output); ceil(max_new_tokens / K) chunks are generated,
        one backbone step each, and the output cut to max_new_tokens. With the cache, the prompt but its
        last chunk runs once (prefill); then at T = 1 each chunk is one `decode_step` from the chunk
        before (compile=True: a compiled graph, the same chunks; 'cudagraphs': that graph replayed as
        a CUDA graph on CUDA), below T = 1 a backbone step and the sampler (`sample_chunks`).
        use_cache=False recomputes the whole prefix every step (the reference for tests). The same
        generator gives the same chunks on every path."""
        x = self.chunks(self.pad_prompt(prompt))                              # (B, L0, K)
        n_steps = -(-max_new_tokens // self.chunk_size)
        new = []
        if use_cache:
            # compiled: a static cache (fixed shapes); eager: the growing cache (attends to the filled part only)
            cache = self.backbone.make_cache(x.shape[0], cache_length(x.shape[1] + n_steps), x.device,
                                             decode_cache_dtype(x.device, self.tok_emb.weight.dtype), static=bool(compile))
            if x.shape[1] > 1:
                self.hidden(x[:, :-1], cache)                                 # prefill, eager
            last = x[:, -1].clone(memory_format=torch.contiguous_format)     # (B, K), strided as the step's outputs
            like_h = self.tok_emb.weight.new_empty(x.shape[0], self.backbone.cfg.n_embd)  # the noise's shape and dtype
            with decoding_step(self, compile, cache) as step:
                for _ in range(n_steps):
                    if sampler.temperature == 1.0:
                        last = step(last, cache, self.head.noise(like_h, 1, generator))   # (B, K)
                    else:
                        h = self.hidden(last[:, None], cache)[:, -1]              # (B, d)
                        last = self.sample_chunks(h, 1, sampler, generator)[0]    # (B, K)
                    new.append(last[:, None])
        else:
            for _ in range(n_steps):
                h = self.hidden(torch.cat([x, *new], 1))[:, -1]
                new.append(self.sample_chunks(h, 1, sampler, generator)[0][:, None])
        out = torch.cat(new, 1).flatten(1)[:, :max_new_tokens]                # (B, max_new_tokens)
        return torch.cat([prompt, out], 1)

    # -- BrierLM --------------------------------------------------------------------------------

    def rollouts(self, x: torch.Tensor, starts: torch.Tensor, n_chunks: int, sampler: Sampler = Sampler(),
                 generator: torch.Generator | None = None):
        """Chunks x (B, L, K); for every row and chunk position i in `starts` (P,), sample n_chunks chunks
        given x[:, :i], each decoded and fed back before the next (`TreeRollout`: one backbone step per
        chunk for all P). Returns the tokens (B, P, n_chunks*K) and the hidden state each chunk was
        drawn from (B, P, n_chunks, d)."""
        tree = TreeRollout(self.backbone, self.embed(x), starts, n_chunks, self.tok_emb.weight.dtype)
        h = tree.hidden[:, starts - 1]                                        # (B, P, d): given chunks < i
        chunks, hs = [], []
        for j in range(n_chunks):
            hs.append(h)
            chunks.append(self.sample_chunks(h, 1, sampler, generator)[0])    # (B, P, K)
            if j < n_chunks - 1:
                h = tree.step(self.embed(chunks[-1]))                         # (B, P, d)
        return torch.cat(chunks, -1), torch.stack(hs, 2)

    @torch.no_grad()
    def continuations(self, blocks: torch.Tensor, sampler: Sampler = Sampler(),
                      generator: torch.Generator | None = None) -> dict:
        """BrierLM's samples. blocks (B, C) -> 'samples' (2, B, P, 4), two independent continuations of
        4 tokens at every chunk position i >= 1 with 4 target tokens from token i K on, given chunks < i,
        and 'target' (B, P, 4). K >= 4: two chunks drawn from the head at once (P = C/K - 1). K < 4:
        each sample is a rollout of ceil(4/K) chunks, every chunk fed back before the next is drawn."""
        K = self.chunk_size
        x = self.chunks(blocks)                                               # (B, L, K)
        B, L = x.shape[:2]
        if K >= NGRAM:
            h = self.hidden(x)[:, :-1]                                        # (B, L-1, d)
            samples = self.sample_chunks(h, 2, sampler, generator)[..., :NGRAM]   # (2, B, L-1, 4)
            return {'samples': samples, 'target': x[:, 1:, :NGRAM]}
        R = -(-NGRAM // K)                                                    # chunks per rollout
        starts = torch.arange(1, L - R + 1, device=blocks.device)            # (P,) chunk positions
        if starts.numel() == 0:
            raise ValueError(f"blocks of {blocks.shape[1]} tokens (K={K}) leave no chunk position with context "
                             f"and {NGRAM} tokens to predict: use blocks of at least {(R + 1) * K} tokens")
        toks, _ = self.rollouts(torch.cat([x, x]), starts, R, sampler, generator)  # (2B, P, R*K): streams a, b
        target = blocks[:, starts[:, None] * K + torch.arange(NGRAM, device=blocks.device)]  # (B, P, 4)
        return {'samples': toks[..., :NGRAM].unflatten(0, (2, B)), 'target': target}
