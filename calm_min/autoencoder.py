"""Stage 1 of CALM: the chunk autoencoder, a context-free VAE that maps K tokens to one latent vector
of size l and back (docs/method.md section 2). No attention: each chunk is encoded
on its own.

Encoder: embed -> residual SwiGLU per token -> concatenate K -> Linear(K d -> d) -> residual SwiGLU
-> RMSNorm -> Linear(d -> 2l) = (mu, log_sigma). Decoder mirrors it; its output projection is tied to
the encoder embedding. Training: token dropout, reparameterised sample, latent dropout, per-dimension
KL clipped from below, loss = summed token cross-entropy + beta * clipped KL (docs/method.md section 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import RMSNorm, ResidualSwiGLU, init_weights
from .device import DECODE_MM_MAX_SIDE


@dataclass
class AEConfig:
    vocab_size: int = 4096
    chunk_size: int = 4          # K
    latent_size: int = 128       # l
    dim: int = 512               # d_ae
    hidden: int = 1280           # SwiGLU inner width
    n_blocks: int = 1            # residual blocks per stage
    token_dropout: float = 0.15
    latent_dropout: float = 0.15
    kl_clip: float = 0.5         # KL_j <- max(KL_j, kl_clip); 0 turns the floor off
    kl_beta: float = 0.001
    mask_id: int = 0             # the fixed id of token dropout (we use the end-of-text id)

    @staticmethod
    def from_dict(d: dict) -> 'AEConfig':
        return AEConfig(**d)


class Autoencoder(nn.Module):
    kind = 'ae'

    def __init__(self, cfg: AEConfig):
        super().__init__()
        self.cfg = cfg
        K, d, l, hid, nb = cfg.chunk_size, cfg.dim, cfg.latent_size, cfg.hidden, cfg.n_blocks
        self.emb = nn.Embedding(cfg.vocab_size, d)
        self.enc_tok = nn.Sequential(*[ResidualSwiGLU(d, hid) for _ in range(nb)])
        self.enc_squeeze = nn.Linear(K * d, d, bias=False)
        self.enc_chunk = nn.Sequential(*[ResidualSwiGLU(d, hid) for _ in range(nb)])
        self.enc_norm = RMSNorm(d)
        self.enc_out = nn.Linear(d, 2 * l)
        self.dec_in = nn.Linear(l, d)
        self.dec_chunk = nn.Sequential(*[ResidualSwiGLU(d, hid) for _ in range(nb)])
        self.dec_expand = nn.Linear(d, K * d, bias=False)
        self.dec_tok = nn.Sequential(*[ResidualSwiGLU(d, hid) for _ in range(nb)])
        self.dec_norm = RMSNorm(d)
        self.apply(init_weights)

    # -- the public interface the later stages use -----------------------------------------------

    def check_tokens(self, tokens: torch.Tensor):
        K, V = self.cfg.chunk_size, self.cfg.vocab_size
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        if tokens.dim() < 1 or tokens.shape[-1] != K:
            raise ValueError(f"tokens must have shape (..., {K}) (chunk_size K={K}), got {tuple(tokens.shape)}; "
                             f"reshape a sequence with tokens.view(B, -1, {K}) after padding it to a multiple of {K}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
            raise ValueError(f"token ids must be in [0, {V}) (the autoencoder's vocabulary), got "
                             f"min {int(tokens.min())}, max {int(tokens.max())}: was it trained with another tokenizer?")

    def encode(self, tokens: torch.Tensor):
        """tokens (..., K) -> (mu, log_sigma), each (..., l)."""
        h = self.enc_tok(self.emb(tokens))                                   # (..., K, d)
        h = self.enc_squeeze(h.flatten(-2))                                  # (..., d)
        h = self.enc_out(self.enc_norm(self.enc_chunk(h)))                   # (..., 2l)
        mu, log_sigma = h.chunk(2, dim=-1)                                   # (..., l) each
        return mu, log_sigma

    @staticmethod
    def sample_latent(mu: torch.Tensor, log_sigma: torch.Tensor, n: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mu + sigma * eps: (..., l), or (n, ..., l) with n draws."""
        shape = mu.shape if n is None else (n, *mu.shape)
        eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + log_sigma.exp() * eps

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., l) -> logits (..., K, V)."""
        h = self.dec_chunk(self.dec_in(z))                                   # (..., d)
        h = self.dec_expand(h).unflatten(-1, (self.cfg.chunk_size, self.cfg.dim))  # (..., K, d)
        if self._one_token_at_a_time(h):
            return torch.stack([self._token_logits(t) for t in h.unbind(-2)], -2)  # (1, K, V)
        return self._token_logits(h)                                         # (..., K, V)

    def _one_token_at_a_time(self, h: torch.Tensor) -> bool:
        """True in the compiled decoding step on CPU for one chunk when inductor writes the token
        stage's products itself (every side <= DECODE_MM_MAX_SIDE): it splits one K-row product between
        the threads by rows, each thread reading the whole weight matrix, but fuses K one-row products
        into one pass over each weight for all K rows (docs/throughput.md). BLAS products stay one
        K-row call: K one-row calls would read the weights K times."""
        sides = (self.cfg.dim, 2 * self.cfg.hidden, self.cfg.vocab_size)
        return (torch.compiler.is_compiling() and h.device.type == 'cpu' and h.shape[:-2].numel() == 1
                and max(sides) <= DECODE_MM_MAX_SIDE)

    def _token_logits(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder's token stage: (..., d) per token -> logits (..., V)."""
        return self.dec_norm(self.dec_tok(h)) @ self.emb.weight.T            # (..., V)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., l) -> tokens (..., K), argmax per position."""
        return self.decode_logits(z).argmax(-1)

    # -- training objective ---------------------------------------------------------------------

    def kl_terms(self, mu: torch.Tensor, log_sigma: torch.Tensor):
        """Per-dimension KL to N(0, I) (..., l), and the clipped sum over dimensions (...)."""
        kl = 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma)   # (..., l)
        clipped = kl.clamp_min(self.cfg.kl_clip) if self.cfg.kl_clip > 0 else kl
        return kl, clipped.sum(-1)

    def flops_per_token(self, context: int = 0) -> dict:
        """Analytic FLOPs per token (calm_min/flops.py); each chunk is coded alone, so `context` (the
        models' common signature) does not matter."""
        from .flops import ae_per_token                   # flops.py imports AEConfig from here
        return ae_per_token(self.cfg)

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None,
                generator: torch.Generator | None = None):
        """Chunks x (..., K) -> (output dict, loss): the reconstruction of `targets` (default: x itself).
        In training mode token dropout and latent dropout are applied; the loss is summed token
        cross-entropy + beta * clipped KL, averaged over chunks."""
        self.check_tokens(x)
        tokens = x if targets is None else targets
        cfg, inp = self.cfg, x
        if self.training and cfg.token_dropout > 0:
            drop = torch.rand(tokens.shape, generator=generator, device=tokens.device) < cfg.token_dropout
            inp = tokens.masked_fill(drop, cfg.mask_id)
        mu, log_sigma = self.encode(inp)                                      # (..., l)
        z = self.sample_latent(mu, log_sigma, generator=generator)           # (..., l)
        if self.training and cfg.latent_dropout > 0:
            keep = torch.rand(z.shape, generator=generator, device=z.device) >= cfg.latent_dropout
            z = z * keep / (1 - cfg.latent_dropout)                           # inverted dropout
        logits = self.decode_logits(z)                                        # (..., K, V)
        ce = F.cross_entropy(logits.float().flatten(0, -2), tokens.flatten(), reduction='none')
        ce = ce.view(tokens.shape).sum(-1).mean()                             # summed over K, mean over chunks
        kl, kl_clipped = self.kl_terms(mu.float(), log_sigma.float())
        loss = ce + cfg.kl_beta * kl_clipped.mean()
        with torch.no_grad():
            acc = (logits.argmax(-1) == tokens).float().mean()
        return {'logits': logits, 'ce': ce.detach(), 'kl': kl.sum(-1).mean().detach(), 'acc': acc}, loss

