"""The energy head and the energy loss (docs/method.md section 4).

`EnergyHead` turns a hidden state h into a sample of the next chunk's latent in one forward pass:
uniform noise eps in [-0.5, 0.5]^noise_size is refined by residual blocks conditioned on h, and the
zero-initialised output layer makes every sample equal at step 0. `energy_loss` is minus the energy
score without its constant target-target term, a strictly proper scoring rule for alpha in (0, 2).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import init_weights


class HeadBlock(nn.Module):
    """u = [LN(z); c] -> Linear(2d -> d) -> SiLU -> Linear(d -> d) -> SiLU -> Linear(d -> 2d) -> (g, v)
    -> Linear(d -> d)(SiLU(g) * v); z <- z + that. The first Linear acts on a concatenation, so it is
    written as the sum of a part for LN(z) and a part for c; c's part is computed once per position
    and shared by all samples (the same function, N times fewer FLOPs for that half)."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.in_z = nn.Linear(d, d)
        self.in_c = nn.Linear(d, d, bias=False)
        self.mid = nn.Linear(d, d)
        self.glu = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)

    def forward(self, z, c):
        u = F.silu(self.in_z(self.norm(z)) + self.in_c(c))                  # (N, ..., d)
        g, v = self.glu(F.silu(self.mid(u))).chunk(2, dim=-1)               # (N, ..., d) each
        return z + self.out(F.silu(g) * v)


class EnergyHead(nn.Module):
    def __init__(self, d: int, latent_size: int, noise_size: int = 64, n_blocks: int = 4):
        super().__init__()
        self.noise_size = noise_size
        self.noise_in = nn.Linear(noise_size, d)
        self.noise_norm = nn.LayerNorm(d)
        self.cond_in = nn.Linear(d, d)
        self.cond_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(HeadBlock(d) for _ in range(n_blocks))
        self.final_norm = nn.LayerNorm(d)
        self.final_mid = nn.Linear(d, d)
        self.final_out = nn.Linear(d, latent_size)
        self.apply(init_weights)
        nn.init.zeros_(self.final_out.weight)  # all samples coincide at step 0 (docs/method.md section 4)
        nn.init.zeros_(self.final_out.bias)

    def forward(self, h: torch.Tensor, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """h (..., d) -> n_samples independent latent samples (n_samples, ..., l)."""
        return self.transform(h, self.noise(h, n_samples, generator))

    def noise(self, h: torch.Tensor, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The input noise eps ~ U[-0.5, 0.5]^noise_size of n_samples samples per position (N, ..., noise)."""
        return torch.rand((n_samples, *h.shape[:-1], self.noise_size), generator=generator,
                          device=h.device, dtype=h.dtype) - 0.5

    def transform(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """h (..., d) and noise eps (N, ..., noise) -> samples (N, ..., l): the deterministic part."""
        z = self.noise_norm(self.noise_in(eps))                                 # (N, ..., d)
        c = self.cond_norm(self.cond_in(h))                                     # (..., d), broadcast over N
        for block in self.blocks:
            z = block(z, c)
        return self.final_out(F.silu(self.final_mid(self.final_norm(z))))      # (N, ..., l)


def _pow_dist(d: torch.Tensor, alpha: float) -> torch.Tensor:
    """d ** alpha with a finite (zero) gradient where d == 0."""
    if alpha == 1.0:
        return d
    pos = d > 0
    return torch.where(pos, torch.where(pos, d, torch.ones_like(d)).pow(alpha), torch.zeros_like(d))


class _Distances(torch.autograd.Function):
    """||x_n - y_m|| for x (P, N, D) and y (P, M, D) -> (P, N, M), through matrix products, in float32
    whatever the autocast: d^2 = |x_n|^2 + |y_m|^2 - 2 x_n.y_m forward, and backward, with w = grad / d,
    dL/dx_n = sum_m w_nm (x_n - y_m) = x_n sum_m w_nm - (w @ y)_n (and the same for y). torch.cdist's
    exact kernel loops over every pair and dimension instead, three times slower forward and backward
    at l = 128 (docs/throughput.md). The expansion loses digits where d is tiny beside |x| and |y|, and
    two points that coincide get a small nonzero distance: fine for model samples against target
    draws, which never coincide, but not for samples against samples (all equal at step 0)."""

    @staticmethod
    def forward(ctx, x, y):
        with torch.autocast(x.device.type, enabled=False):
            sq = torch.baddbmm((x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2),
                               x, y.transpose(1, 2), alpha=-2)                 # (P, N, M)
            d = sq.clamp_min_(0).sqrt_()
        ctx.save_for_backward(x, y, d)
        return d

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, y, d = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            w = torch.where(d > 0, grad / d, 0.0)                                # (P, N, M)
            dx = x * w.sum(-1, keepdim=True) - torch.bmm(w, y) if ctx.needs_input_grad[0] else None
            dy = y * w.sum(-2).unsqueeze(-1) - torch.bmm(w.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return dx, dy


def energy_loss(samples: torch.Tensor, targets: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """samples (N, ..., D) from the model, targets (M, ..., D) from the target distribution ->
    per-position loss (...):  2/(NM) sum_{n,m} ||x_n - y_m||^a  -  1/(N(N-1)) sum_{n!=k} ||x_n - x_k||^a.

    Pairwise distances come from (P, N, D) x (P, M, D) views, so memory grows as P*N*M (the distance
    matrix), never as P*N*M*D. Samples against targets go through matrix products (`_Distances`);
    samples against samples through `torch.cdist`'s exact kernel, so that coincident samples have
    distance exactly 0 and a zero, finite gradient."""
    N, M = samples.shape[0], targets.shape[0]
    if N < 2:
        raise ValueError(f"energy_loss needs at least 2 model samples per position (got N={N}): the "
                         f"diversity term compares pairs of samples")
    if not (0 < alpha <= 2):
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    if samples.shape[1:] != targets.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and targets {tuple(targets.shape)} must agree "
                         f"after their first (sample) dimension")
    batch_shape, D = samples.shape[1:-1], samples.shape[-1]
    x = samples.reshape(N, -1, D).transpose(0, 1).float()                      # (P, N, D)
    y = targets.reshape(M, -1, D).transpose(0, 1).float()                      # (P, M, D)
    exact = 'donot_use_mm_for_euclid_dist'
    fidelity = _pow_dist(_Distances.apply(x, y), alpha).sum((1, 2))                         # (P,)
    diversity = _pow_dist(torch.cdist(x, x, compute_mode=exact), alpha).sum((1, 2))         # (P,), diagonal is 0
    loss = 2.0 / (N * M) * fidelity - diversity / (N * (N - 1))
    return loss.view(batch_shape)
