"""BrierLM: likelihood-free evaluation (docs/method.md section 5), usable on its
own for any model that can draw samples.

Brier(P, y) = 2 P(y) - sum_x P(x)^2, estimated without bias from two independent samples a, b:
1[a = y] + 1[b = y] - 1[a = b]. Brier-n scores the next n tokens as one outcome; BrierLM is
100 * (Brier-1 Brier-2 Brier-3 Brier-4)^(1/4), each mean clamped at 0 first (the official code
clamps the product, which an even number of negative means would turn positive).

The estimators here see samples only. A model supplies them through its `continuations(blocks,
sampler, generator)` method: two independent 4-token continuations per scored position ('samples'
(2, B, P, 4)) and the true tokens ('target' (B, P, 4)); CALM scores the positions at its chunk
boundaries, the baseline every 4 tokens (the same 4-grams for K = 4). A model with a softmax may add
exact terms ('p_target' P(y_1..n), 'sum_sq' sum_x p(x | sampled prefix)^2) and `estimate` then uses
the lower-variance form the official baseline uses: 2 P(y_1..n) - 1[a_<n = b_<n] sum_x p(x | a_<n)^2
(sampled prefixes, exact last-token sum): same expectation (tested against brute force).
"""
from __future__ import annotations

import math

import torch

NGRAM = 4


def brier_estimate(sample_a: torch.Tensor, sample_b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P, n) integer tensors -> (P, n) float: column j is the two-sample estimate of Brier-(j+1)."""
    if not (sample_a.shape == sample_b.shape == target.shape) or sample_a.dim() != 2:
        raise ValueError(f"sample_a, sample_b and target must share one (P, n) shape, got "
                         f"{tuple(sample_a.shape)}, {tuple(sample_b.shape)}, {tuple(target.shape)}")
    hit_a = (sample_a == target).long().cumprod(-1)
    hit_b = (sample_b == target).long().cumprod(-1)
    collide = (sample_a == sample_b).long().cumprod(-1)
    return (hit_a + hit_b - collide).float()


def exact_brier(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """probs (..., V) an explicit distribution, target (...) -> 2 P(y) - sum_x P(x)^2, shape (...)."""
    return 2 * probs.gather(-1, target[..., None]).squeeze(-1) - probs.pow(2).sum(-1)


def brierlm(brier_means) -> float:
    """100 * geometric mean of the mean Brier-1..4, each clamped at 0 (a model worse than one that
    never matches scores 0, however many of its Brier-n are negative)."""
    vals = [float(v) for v in brier_means]
    if len(vals) != NGRAM:
        raise ValueError(f"brierlm takes the {NGRAM} means Brier-1..{NGRAM}, got {len(vals)}")
    return 100.0 * math.prod(max(v, 0.0) for v in vals) ** (1.0 / NGRAM)


def summarize(est: torch.Tensor, groups: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-position estimates (P, 4) and their block ids (P,) -> BrierLM, Brier-n, and standard errors
    from a bootstrap over blocks (positions within a block are correlated, blocks much less so)."""
    est, groups = est.double().cpu(), groups.cpu()
    means = est.mean(0)
    G = int(groups.max()) + 1
    sums = torch.zeros(G, NGRAM, dtype=torch.float64).index_add_(0, groups, est)   # (G, 4)
    counts = torch.bincount(groups, minlength=G).double()                          # (G,)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(G, (n_boot, G), generator=g)                              # (n_boot, G)
    boot = sums[pick].sum(1) / counts[pick].sum(1, keepdim=True)                   # (n_boot, 4)
    boot_lm = torch.tensor([brierlm(b) for b in boot])
    out = {'brierlm': brierlm(means), 'brierlm_se': float(boot_lm.std()), 'positions': est.shape[0], 'blocks': G}
    for n in range(NGRAM):
        out[f'brier{n + 1}'] = float(means[n])
        out[f'brier{n + 1}_se'] = float(boot[:, n].std())
    return out


def estimate(cont: dict, exact: bool = True) -> torch.Tensor:
    """A model's `continuations` output -> per-position estimates (B, P, 4) of Brier-1..4: the exact
    form where the model supplied its terms and `exact` is on, else the two-sample estimator."""
    a, b = cont['samples']                                                    # (B, P, 4) each
    target = cont['target']                                                   # (B, P, 4)
    if exact and 'p_target' in cont:
        same_prefix = torch.cat([torch.ones_like(a[..., :1]), (a == b).long().cumprod(-1)[..., :-1]], -1)  # 1[a_<n = b_<n]
        collision = same_prefix * 0.5 * (cont['sum_sq'][0] + cont['sum_sq'][1])   # (B, P, 4)
        return 2 * cont['p_target'] - collision
    return brier_estimate(a.flatten(0, 1), b.flatten(0, 1), target.flatten(0, 1)).view(*target.shape)


@torch.no_grad()
def evaluate_brier(model, blocks: torch.Tensor, batch_size: int = 16, exact: bool = True, seed: int = 0,
                   n_boot: int = 1000, sampler=None) -> dict:
    """BrierLM of any model with `continuations` on blocks (n, C), with bootstrap standard errors."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    kw = {} if sampler is None else {'sampler': sampler}
    ests, groups = [], []
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i:i + batch_size].to(dev)
        e = estimate(model.continuations(x, generator=g, **kw), exact)        # (b, P, 4)
        ests.append(e.flatten(0, 1).cpu())
        groups.append(torch.arange(i, i + x.shape[0]).repeat_interleave(e.shape[1]))
    return summarize(torch.cat(ests), torch.cat(groups), n_boot, seed)
