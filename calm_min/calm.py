"""Stage 2 of CALM: the next-vector language model (spec section 3).

Input: the K token embeddings of each chunk, concatenated and compressed (Linear(K d -> 2d) -> SiLU
-> Linear(2d -> d) -> LayerNorm); the backbone (RoPE over chunk positions); the energy head. The
hidden state at chunk position i predicts chunk i+1, whose target is the frozen autoencoder's
posterior N(mu, sigma^2), from which M fresh draws are compared with N head samples by the energy
loss. Generation takes one backbone step per K tokens: head sample -> frozen decoder -> argmax ->
K tokens fed back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .autoencoder import Autoencoder
from .backbone import Backbone, BackboneConfig, init_weights
from .energy_head import EnergyHead, energy_loss
from .sampling import batch_temperature_sample, check_temperature, exact_temperature_sample


@dataclass
class CALMConfig:
    vocab_size: int = 4096
    chunk_size: int = 4          # K, must equal the autoencoder's
    latent_size: int = 128       # l, must equal the autoencoder's
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head_blocks: int = 4
    noise_size: int = 64
    n_samples: int = 8           # N
    n_targets: int = 100         # M
    alpha: float = 1.0

    @staticmethod
    def from_dict(d: dict) -> 'CALMConfig':
        return CALMConfig(**{**d, 'backbone': BackboneConfig(**d['backbone'])})


class CALM(nn.Module):
    kind = 'calm'

    def __init__(self, cfg: CALMConfig, ae: Autoencoder):
        super().__init__()
        for name in ('vocab_size', 'chunk_size', 'latent_size'):
            if getattr(cfg, name) != getattr(ae.cfg, name):
                raise ValueError(f"autoencoder/model mismatch: the CALM config has {name}={getattr(cfg, name)} "
                                 f"but the autoencoder has {getattr(ae.cfg, name)}")
        self.cfg = cfg
        d, K = cfg.backbone.n_embd, cfg.chunk_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.compress = nn.Sequential(nn.Linear(K * d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d), nn.LayerNorm(d))
        self.tok_emb.apply(init_weights)
        self.compress.apply(init_weights)
        self.backbone = Backbone(cfg.backbone)
        self.head = EnergyHead(d, cfg.latent_size, cfg.noise_size, cfg.head_blocks)
        self.ae = ae
        self.ae.requires_grad_(False)
        self.ae.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.ae.eval()  # frozen: never token or latent dropout
        return self

    def chunks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) with T a multiple of K -> (B, T/K, K)."""
        K = self.cfg.chunk_size
        if tokens.shape[-1] % K:
            raise ValueError(f"CALM takes whole chunks: the sequence length {tokens.shape[-1]} is not a multiple "
                             f"of chunk_size={K}")
        return tokens.view(tokens.shape[0], -1, K)

    def hidden(self, x: torch.Tensor, cache=None, pos=None, mask=None) -> torch.Tensor:
        """Chunks x (B, L, K) -> backbone hidden states (B, L, d); position i conditions chunk i+1.
        `cache`, `pos` and `mask` go to the backbone (see `Backbone.forward`)."""
        e = self.tok_emb(x).flatten(-2)                                       # (B, L, K*d)
        return self.backbone(self.compress(e), cache=cache, pos=pos, mask=mask)  # (B, L, d)

    def forward(self, tokens: torch.Tensor, generator: torch.Generator | None = None):
        """tokens (B, T) -> (output dict, mean energy loss over the B * (T/K - 1) predicted chunks)."""
        x = self.chunks(tokens)                                               # (B, L, K)
        h = self.hidden(x)[:, :-1]                                            # (B, L-1, d)
        with torch.no_grad():
            mu, log_sigma = self.ae.encode(x[:, 1:])                          # (B, L-1, l)
            y = self.ae.sample_latent(mu.float(), log_sigma.float(), self.cfg.n_targets, generator)  # (M, B, L-1, l)
        samples = self.head(h, self.cfg.n_samples, generator)                 # (N, B, L-1, l)
        loss = energy_loss(samples, y, self.cfg.alpha).mean()
        with torch.no_grad():
            mean_err = (samples.float().mean(0) - mu.float()).norm(dim=-1).mean()
        return {'samples': samples, 'mean_err': mean_err}, loss

    # -- generation -----------------------------------------------------------------------------

    def pad_prompt(self, prompt: torch.Tensor) -> torch.Tensor:
        """Left-pad (B, T0) with end-of-text (the AE's mask/pad id) to a whole number of chunks
        (at least one): the model reads the padding as the end of a previous document."""
        K = self.cfg.chunk_size
        pad = (-prompt.shape[1]) % K or (K if prompt.shape[1] == 0 else 0)
        fill = torch.full((prompt.shape[0], pad), self.ae.cfg.mask_id, dtype=prompt.dtype, device=prompt.device)
        return torch.cat([fill, prompt], 1)

    def next_chunk(self, h: torch.Tensor, temperature: float = 1.0, sampler: str = 'batch',
                   num_candidates: int = 200, max_draws: int | None = 100_000,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Hidden states h (B, d) -> the next chunk's tokens (B, K) at the given temperature."""
        if temperature == 1.0:
            return self.ae.decode(self.head(h, 1, generator)[0])             # (B, K)
        check_temperature(temperature)
        if sampler == 'batch':
            z = self.head(h, num_candidates, generator)                       # (N, B, l): one batched head call
            pool = self.ae.decode(z).transpose(0, 1)                           # (B, N, K): one batched decoder call
            return batch_temperature_sample(pool, temperature, generator)
        if sampler == 'exact':
            rows = []
            for b in range(h.shape[0]):
                def draw(m, hb=h[b]):
                    return self.ae.decode(self.head(hb, m, generator))        # (m, K)
                rows.append(exact_temperature_sample(draw, temperature, generator, max_draws)[0])
            return torch.stack(rows)
        raise ValueError(f"sampler must be 'batch' or 'exact', got {sampler!r}")

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 sampler: str = 'batch', num_candidates: int = 200, max_draws: int | None = 100_000,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """prompt (B, T0) -> (B, T0 + max_new_tokens). The prompt is left-padded to whole chunks
        (`pad_prompt`, padding removed from the output); ceil(max_new_tokens / K) chunks are generated,
        one backbone step each, and the output cut to max_new_tokens. use_cache=False recomputes the
        whole prefix every step (the reference for tests)."""
        K = self.cfg.chunk_size
        x = self.chunks(self.pad_prompt(prompt))                              # (B, L0, K)
        n_steps = -(-max_new_tokens // K)
        kw = dict(temperature=temperature, sampler=sampler, num_candidates=num_candidates,
                  max_draws=max_draws, generator=generator)
        new = []
        if use_cache:
            cache = self.backbone.make_cache(x.shape[0], x.shape[1] + n_steps, x.device, self.tok_emb.weight.dtype)
            step_in = x
            for _ in range(n_steps):
                h = self.hidden(step_in, cache)[:, -1]                        # (B, d)
                step_in = self.next_chunk(h, **kw)[:, None]                   # (B, 1, K)
                new.append(step_in)
        else:
            for _ in range(n_steps):
                h = self.hidden(torch.cat([x, *new], 1))[:, -1]
                new.append(self.next_chunk(h, **kw)[:, None])
        out = torch.cat(new, 1).flatten(1)[:, :max_new_tokens]                # (B, max_new_tokens)
        return torch.cat([prompt, out], 1)
