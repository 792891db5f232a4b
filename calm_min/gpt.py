"""The discrete baseline: token embedding -> backbone -> tied LM head, trained with next-token
cross-entropy. Every CALM figure is compared with this model at the same backbone size on the same
data (the paper's "Transformer-S/M/L"; docs/method.md section 1).

It has the interface every model of calm-min shares: `forward(x, targets=None, generator=None)`,
`generate(prompt, max_new_tokens, sampler)` and `continuations(blocks, ...)` for BrierLM.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone, BackboneConfig, KVCache, TreeRollout, cache_length, init_weights
from .brierlm import NGRAM
from .flops import gpt_per_token
from .device import decode_cache_dtype, decoding_step
from .sampling import Sampler, pick_token, sample_logits


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    @staticmethod
    def from_dict(d: dict) -> 'GPTConfig':
        return GPTConfig(**{**d, 'backbone': BackboneConfig(**d['backbone'])})


class GPT(nn.Module):
    kind = 'gpt'
    tokens_per_step = 1          # tokens predicted per backbone position

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.backbone.n_embd)
        init_weights(self.tok_emb)
        self.backbone = Backbone(cfg.backbone)

    @staticmethod
    def train_window(block_size: int) -> int:
        """Tokens per training example: block_size of input and the one token after it."""
        return block_size + 1

    def flops_per_token(self, context: int) -> dict:
        """Analytic FLOPs per token at `context` tokens of context (calm_min/flops.py)."""
        return gpt_per_token(self.cfg.backbone, self.cfg.vocab_size, context)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.tok_emb.weight.T                                     # (..., V), tied to the embedding

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """x (B, T) -> logits (B, T, V); with targets (B, T) (x shifted by one token), also the mean
        cross-entropy. `generator` is unused (the baseline's training is deterministic)."""
        logits = self.lm_head(self.backbone(self.tok_emb(x)))               # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    def decode_step(self, x: torch.Tensor, cache: KVCache, u: torch.Tensor, temperature: float = 1.0,
                    top_k: int = 0) -> torch.Tensor:
        """One decoding step: the last tokens x (B, 1) and the sampling noise u (B, V) ~ U(0, 1) -> the
        next tokens (B, 1); `cache` advances by one position. With a StaticKVCache every step has the
        same shapes, so the step compiles to one graph (`generate(compile=True)`)."""
        h = self.backbone(self.tok_emb(x), cache=cache)[:, -1]               # (B, d)
        return pick_token(self.lm_head(h), u, temperature, top_k)[:, None]   # (B, 1)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, sampler: Sampler = Sampler(),
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 compile: bool | str = False) -> torch.Tensor:
        """Continue prompt (B, T0) by max_new_tokens sampled tokens -> (B, T0 + max_new_tokens).
        With the cache, the prompt but its last token runs once (prefill), and each new token is one
        `decode_step` from the last token; compile=True runs that step as a compiled graph (the same
        tokens), compile='cudagraphs' replays that graph as a CUDA graph on CUDA (`device.decoding_step`).
        use_cache=False recomputes the whole prefix every step (the reference for tests). The same
        generator gives the same tokens on every path."""
        T, k = sampler.temperature, sampler.top_k
        out = prompt
        if not use_cache:
            for _ in range(max_new_tokens):
                logits, _ = self(out)
                out = torch.cat([out, sample_logits(logits[:, -1], T, k, generator)[:, None]], 1)
            return out
        B, V = prompt.shape[0], self.cfg.vocab_size
        # compiled: a static cache (fixed shapes); eager: the growing cache, which attends to the filled part only
        cache = self.backbone.make_cache(B, cache_length(prompt.shape[1] + max_new_tokens), prompt.device,
                                         decode_cache_dtype(prompt.device, self.tok_emb.weight.dtype), static=bool(compile))
        if prompt.shape[1] > 1:
            self.backbone(self.tok_emb(prompt[:, :-1]), cache=cache)          # prefill, eager
        # the step's own outputs are contiguous: so is its first input, or dynamo would guard on the
        # prompt's strides and compile the step a second time
        x, new = prompt[:, -1:].clone(memory_format=torch.contiguous_format), []
        with decoding_step(self, compile, cache) as step:
            for _ in range(max_new_tokens):
                u = torch.rand((B, V), generator=generator, device=prompt.device)  # as sample_logits draws it
                x = step(x, cache, u, T, k)                                       # (B, 1)
                new.append(x)
        return torch.cat([prompt, *new], 1)

    @torch.no_grad()
    def continuations(self, blocks: torch.Tensor, sampler: Sampler = Sampler(), stride: int = 4,
                      generator: torch.Generator | None = None) -> dict:
        """BrierLM's samples. blocks (B, C); at every start t = stride, 2 stride, ..., <= C - 4, two
        independent 4-token continuations given blocks[:, :t], sampled at the sampler's temperature.
        Returns 'samples' (2, B, P, 4) and 'target' (B, P, 4), plus the exact terms the baseline's
        softmax allows (`brierlm.estimate`): 'p_target' P(y_1..n) (B, P, 4) from teacher forcing and
        'sum_sq' sum_x p(x | prefix)^2 of each sampled step (2, B, P, 4), untempered."""
        B, C = blocks.shape
        starts = torch.arange(stride, C - NGRAM + 1, stride, device=blocks.device)   # (P,)
        if starts.numel() == 0:
            raise ValueError(f"blocks of {C} tokens leave no position with context and {NGRAM} tokens to predict")
        both = torch.cat([blocks, blocks])                                    # (2B, C): streams a and b
        tree = TreeRollout(self.backbone, self.tok_emb(both), starts, NGRAM, self.tok_emb.weight.dtype)
        logits = self.lm_head(tree.hidden)                                    # (2B, C, V)
        step_logits = logits[:, starts - 1]                                   # (2B, P, V): p(. | block[:t])
        samples, sq = [], []
        for j in range(NGRAM):
            probs = F.softmax(step_logits.float(), -1)                        # (2B, P, V)
            sq.append(probs.pow(2).sum(-1))
            tok = sample_logits(step_logits.flatten(0, 1), sampler.temperature, generator=generator)
            samples.append(tok.view(2 * B, -1))
            if j == NGRAM - 1:
                break
            step_logits = self.lm_head(tree.step(self.tok_emb(samples[-1])))  # (2B, P, V)
        target = blocks[:, starts[:, None] + torch.arange(NGRAM, device=blocks.device)]   # (B, P, 4)
        idx = starts[:, None] + torch.arange(NGRAM, device=blocks.device) - 1            # (P, 4)
        logp = F.log_softmax(logits[:B].float(), -1)[:, idx]                              # (B, P, 4, V)
        p_target = logp.gather(-1, target[..., None]).squeeze(-1).cumsum(-1).exp()        # (B, P, 4)
        return {'samples': torch.stack(samples, -1).unflatten(0, (2, B)), 'target': target,
                'p_target': p_target, 'sum_sq': torch.stack(sq, -1).unflatten(0, (2, B))}
