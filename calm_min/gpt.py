"""The discrete baseline: token embedding -> backbone -> tied LM head, trained with next-token
cross-entropy. Every CALM figure is compared with this model at the same backbone size on the same
data (spec section 3: the paper's "Transformer-S/M/L").
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone, BackboneConfig, init_weights


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    @staticmethod
    def from_dict(d: dict) -> 'GPTConfig':
        return GPTConfig(**{**d, 'backbone': BackboneConfig(**d['backbone'])})


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,), softmax temperature and optional top-k."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


class GPT(nn.Module):
    kind = 'gpt'

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.backbone.n_embd)
        init_weights(self.tok_emb)
        self.backbone = Backbone(cfg.backbone)

    def lm_head(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.tok_emb.weight.T                                     # (..., V), tied to the embedding

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, V); with targets (B, T), also the mean cross-entropy."""
        logits = self.lm_head(self.backbone(self.tok_emb(idx)))             # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Continue idx (B, T0) by max_new_tokens sampled tokens -> (B, T0 + max_new_tokens).
        With use_cache=False every step recomputes the whole prefix (the reference for tests)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        out = idx
        if not use_cache:
            for _ in range(max_new_tokens):
                logits, _ = self(out)
                out = torch.cat([out, sample_logits(logits[:, -1], temperature, top_k, generator)[:, None]], 1)
            return out
        cache = self.backbone.make_cache(idx.shape[0], idx.shape[1] + max_new_tokens, idx.device,
                                         self.tok_emb.weight.dtype)
        x = idx
        for _ in range(max_new_tokens):
            h = self.backbone(self.tok_emb(x), cache=cache)                   # (B, T, d)
            x = sample_logits(self.lm_head(h[:, -1]), temperature, top_k, generator)[:, None]  # (B, 1)
            out = torch.cat([out, x], 1)
        return out
