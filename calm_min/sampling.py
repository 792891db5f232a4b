"""Sampling: the settings every model's `generate` takes (`Sampler`), softmax sampling for the
discrete baseline, and likelihood-free temperature sampling for CALM (paper Algorithms 1
and 2; docs/method.md section 6): draw x with probability P(x)^(1/T) / Z using only a black-box
sampler of P, as CALM has no softmax to rescale.

`exact_temperature_sample` is the paper's Algorithm 1 (exact for any T in (0, 1]): an integer stage
of n = floor(1/T) identical draws and, for the fractional part a = 1/T - n, a Bernoulli factory that
accepts with probability P(x)^a. `batch_temperature_sample` is Algorithm 2 (T = 1/n only): from a
pool of N draws pick an outcome with probability proportional to C(count, m), m = n, n-1, ..., 1 the
first level any outcome reaches; biased for finite N, consistent as N grows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


class SamplingBudgetExceeded(RuntimeError):
    """The exact sampler used more than `max_draws` draws (its cost explodes as T -> 0)."""


@dataclass(frozen=True)
class Sampler:
    """How `generate` draws each new token (baseline) or chunk (CALM). The temperature is checked here,
    once, where sampling starts; CALM's samplers add their own limit (T <= 1, see `check_temperature`).

    temperature: softmax temperature (baseline) or the target P^(1/T) (CALM), > 0.
    top_k:       baseline only; 0 is off.
    method:      CALM at T < 1: 'batch' (Algorithm 2, T = 1/n) or 'exact' (Algorithm 1, any T in (0, 1]).
    num_candidates: CALM 'batch': the pool size N per chunk.
    max_draws:   CALM 'exact': the most draws one chunk may use (None: no bound)."""
    temperature: float = 1.0
    top_k: int = 0
    method: str = 'batch'
    num_candidates: int = 200
    max_draws: int | None = 100_000

    def __post_init__(self):
        t = self.temperature
        if not isinstance(t, (int, float)) or math.isnan(t) or not (0.0 < t < math.inf):
            raise ValueError(f"temperature must be a finite number > 0, got {t}")
        if t < 1e-6:
            raise ValueError(f"temperature {t} is too small to sample with (1/T would be {1 / t:.3g}); "
                             f"use T >= 1e-6, which is already greedy in effect")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if self.method not in ('batch', 'exact'):
            raise ValueError(f"the CALM sampling method must be 'batch' (Algorithm 2) or 'exact' (Algorithm 1), "
                             f"got {self.method!r}")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {self.num_candidates}")
        if self.max_draws is not None and self.max_draws < 1:
            raise ValueError(f"max_draws must be >= 1 (or None for no bound), got {self.max_draws}")


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) -> (B,), softmax temperature and optional top-k."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device)  # (B, V)
    return pick_token(logits, u, temperature, top_k)


def pick_token(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """The Gumbel-max trick: argmax(logits / T - log(-log u)) with u ~ U(0, 1) (..., V) is a draw from
    softmax(logits / T). The noise comes in as a tensor, so this compiles inside a decoding graph
    while the caller's generator draws u outside it."""
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if math.isnan(t) or not (0.0 < t <= 1.0):
        raise ValueError(f"temperature must be in (0, 1] for likelihood-free sampling, got {temperature} "
                         f"(T > 1 would need P^(1/T) with 1/T < 1, which these samplers cannot form)")
    return t


def inverse_integer(temperature: float) -> int:
    """n for T = 1/n; a clear error if T is not of that form."""
    inv = 1.0 / check_temperature(temperature)
    n = round(inv)
    if abs(inv - n) > 1e-6:
        raise ValueError(f"the batch sampler needs T = 1/n for an integer n (1, 0.5, 1/3, 0.25, ...), "
                         f"got T = {temperature} (1/T = {inv:.4f}); use sampler='exact' for other T")
    return n


def exact_temperature_sample(draw: Callable[[int], torch.Tensor], temperature: float,
                             generator: torch.Generator | None = None, max_draws: int | None = None):
    """One outcome row distributed as P(x)^(1/T) / Z, and the number of draws used.

    draw(m) must return an integer tensor (m, K) of m independent outcomes of P. With max_draws set,
    more draws than that raise `SamplingBudgetExceeded` (expected cost: see `expected_draws`)."""
    t = check_temperature(temperature)
    inv = 1.0 / t
    n = math.floor(inv + 1e-9)
    a = inv - n if inv - n > 1e-9 else 0.0
    used = 0

    def take(m: int) -> torch.Tensor:
        nonlocal used
        if max_draws is not None and used + m > max_draws:
            raise SamplingBudgetExceeded(f"exact temperature sampling at T={temperature} used more than "
                                         f"max_draws={max_draws} draws; raise max_draws, raise T, or use the "
                                         f"batch sampler (T = 1/n)")
        used += m
        return draw(m)

    while True:
        xs = take(n)                                                           # (n, K)
        if not bool((xs == xs[0]).all()):
            continue                                                           # not all equal: start over
        x = xs[0]
        if a == 0.0 or bernoulli_power(lambda: bool((take(1)[0] == x).all()), a, generator):
            return x, used                                                     # else: back to stage 1


def bernoulli_power(coin: Callable[[], bool], a: float, generator: torch.Generator | None = None) -> bool:
    """The Bernoulli factory of Algorithm 1: from a coin that shows True with an unknown probability p,
    True with probability p^a, a in (0, 1). Round i = 1, 2, ...: toss the coin, True ends in True;
    otherwise end in False with probability a / i."""
    i = 1
    while True:
        if coin():
            return True
        u = torch.rand((), generator=generator, device=generator.device if generator else 'cpu')
        if float(u) < a / i:
            return False
        i += 1


def expected_draws(probs: torch.Tensor, temperature: float) -> float:
    """The paper's expected cost of Algorithm 1: (n + 1[a>0] sum_x P(x)^(1/T - 1)) / Z_T."""
    inv = 1.0 / check_temperature(temperature)
    n = math.floor(inv + 1e-9)
    a = inv - n if inv - n > 1e-9 else 0.0
    p = probs[probs > 0].double()
    z = p.pow(inv).sum()
    extra = p.pow(inv - 1).sum() if a > 0 else 0.0
    return float((n + extra) / z)


def batch_temperature_probs(pool: torch.Tensor, temperature: float) -> torch.Tensor:
    """pool (B, N, K) -> (B, N): the probability that Algorithm 2 returns each pool element. An outcome
    x seen c_x times gets weight C(c_x, m) at the first level m = n, n-1, ..., 1 that some outcome
    reaches; each of its c_x copies carries C(c_x, m) / c_x of it."""
    if pool.dim() != 3:
        raise ValueError(f"pool must have shape (B, N, K), got {tuple(pool.shape)}")
    n = inverse_integer(temperature)
    B, N, K = pool.shape
    rows = torch.arange(B, device=pool.device).repeat_interleave(N)              # (B*N,)
    keyed = torch.cat([rows[:, None], pool.reshape(B * N, K)], 1)                 # row id makes outcomes per-row
    _, inverse, counts = torch.unique(keyed, dim=0, return_inverse=True, return_counts=True)
    count = counts[inverse].view(B, N)                                            # (B, N): count of each element's outcome
    m = count.max(-1, keepdim=True).values.clamp_max(n)                           # (B, 1): first non-empty level
    c, md = count.double(), m.double()
    logw = torch.lgamma(c + 1) - torch.lgamma(md + 1) - torch.lgamma((c - md).clamp_min(0) + 1) - c.log()
    logw = logw.masked_fill(count < m, float('-inf'))                              # (B, N)
    return torch.softmax(logw, dim=-1)


def batch_temperature_sample(pool: torch.Tensor, temperature: float,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """pool (B, N, K): N independent outcomes per row -> (B, K), one chosen per row by Algorithm 2.
    Vectorised over rows (torch.unique over (row, outcome) keys); runs on any device."""
    probs = batch_temperature_probs(pool, temperature)                            # (B, N)
    idx = torch.multinomial(probs.float(), 1, generator=generator).squeeze(-1)    # (B,)
    return pool[torch.arange(pool.shape[0], device=pool.device), idx]
