"""BrierLM: likelihood-free evaluation (spec section 4), usable on its own for any model that can
draw samples.

Brier(P, y) = 2 P(y) - sum_x P(x)^2, estimated without bias from two independent samples a, b:
1[a = y] + 1[b = y] - 1[a = b]. Brier-n scores the next n tokens as one outcome; BrierLM is
100 * (Brier-1 Brier-2 Brier-3 Brier-4)^(1/4), each mean clamped at 0 first (the official code
clamps the product, which an even number of negative means would turn positive).

Model estimators, all on the same (context, 4-gram) pairs: blocks of C tokens, the 4-gram starting
at token t = s, 2s, ... (s = K for CALM: the chunk boundaries) with context block[:t].
- `calm_brier`: two head samples per chunk position, each decoded by argmax; for K < 4 each sample
  is a rollout of ceil(4/K) chunks (the official code's approach).
- `gpt_brier(..., exact=False)`: two sampled 4-token rollouts per position (the generic estimator).
- `gpt_brier(..., exact=True)`: 2 P(y_1..n) from teacher forcing, minus the collision term
  1[a_<n = b_<n] * sum_x p(x | a_<n)^2 (sampled prefixes, exact last-token sum): lower variance,
  same expectation.
All positions of a block are rolled out in parallel through the KV cache with a tree-shaped mask.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .gpt import sample_logits

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


# ----------------------------------------------------------------------------------------------
# CALM


@torch.no_grad()
def calm_brier(model, blocks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """blocks (B, C) -> estimates (B, P, 4): per chunk position i >= 1 whose chunks hold 4 target
    tokens from token i K on, two independent samples given chunks < i, scored against those tokens.
    K >= 4: two head latents, each decoded by argmax (P = C/K - 1). K < 4: each sample is a rollout of
    ceil(4/K) chunks, every chunk fed back before the next is drawn (`calm_rollouts`)."""
    K = model.cfg.chunk_size
    x = model.chunks(blocks)                                                  # (B, L, K)
    B, L = x.shape[:2]
    if K >= NGRAM:
        h = model.hidden(x)[:, :-1]                                           # (B, L-1, d)
        z = model.head(h, 2, generator)                                       # (2, B, L-1, l): independent noise
        a, b = model.ae.decode(z)[..., :NGRAM]                                # (B, L-1, 4) each
        t = x[:, 1:, :NGRAM]                                                  # (B, L-1, 4)
        return brier_estimate(a.flatten(0, 1), b.flatten(0, 1), t.flatten(0, 1)).view(*t.shape)
    R = -(-NGRAM // K)                                                        # chunks per rollout
    starts = torch.arange(1, L - R + 1, device=blocks.device)                # (P,) chunk positions
    if starts.numel() == 0:
        raise ValueError(f"blocks of {blocks.shape[1]} tokens (K={K}) leave no chunk position with context "
                         f"and {NGRAM} tokens to predict: use blocks of at least {(R + 1) * K} tokens")
    samples, _ = calm_rollouts(model, torch.cat([x, x]), starts, R, generator)  # (2B, P, R*K): streams a, b
    a, b = samples[:B, :, :NGRAM], samples[B:, :, :NGRAM]                     # (B, P, 4)
    t = blocks[:, starts[:, None] * K + torch.arange(NGRAM, device=blocks.device)]  # (B, P, 4)
    return brier_estimate(a.flatten(0, 1), b.flatten(0, 1), t.flatten(0, 1)).view(*t.shape)


def calm_rollouts(model, x: torch.Tensor, starts: torch.Tensor, n_chunks: int,
                  generator: torch.Generator | None = None):
    """Chunks x (B, L, K); for every row and chunk position i in `starts` (P,), sample n_chunks chunks
    given x[:, :i], each decoded and fed back before the next. Returns the tokens (B, P, n_chunks*K)
    and the hidden state each chunk was drawn from (B, P, n_chunks, d). As in `_rollouts`, the P
    rollouts share the row's KV cache through a tree mask: one backbone step per rolled-out chunk."""
    B, L, _ = x.shape
    P = starts.shape[0]
    dev = x.device
    cache = model.backbone.make_cache(B, L + (n_chunks - 1) * P, dev, model.tok_emb.weight.dtype)
    h = model.hidden(x, cache)[:, starts - 1]                                 # (B, P, d): given chunks < i
    ctx_mask = torch.arange(L, device=dev)[None, :] < starts[:, None]         # (P, L)
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    chunks, hs = [], []
    for j in range(n_chunks):
        hs.append(h)
        c = model.ae.decode(model.head(h, 1, generator)[0])                   # (B, P, K)
        chunks.append(c)
        if j == n_chunks - 1:
            break
        mask = torch.cat([ctx_mask] + [eye] * (j + 1), dim=1)                 # (P, L + (j+1) P)
        h = model.hidden(c, cache, pos=starts + j, mask=mask)                # (B, P, d): P chunks, one per rollout
    return torch.cat(chunks, -1), torch.stack(hs, 2)


# ----------------------------------------------------------------------------------------------
# discrete baseline


def _rollouts(model, blocks: torch.Tensor, starts: torch.Tensor, generator=None, temperature: float = 1.0):
    """For every block row and start t in `starts` (P,), roll out NGRAM tokens given block[:t],
    sampling at softmax `temperature` (sum p^2 is always of the untempered distribution).
    Returns teacher-forced logits (B, C, V), samples (B, P, 4) and sum_x p(x)^2 at each step (B, P, 4).
    The P rollouts share the block's cache: step j's queries see context keys < t and their own
    earlier rollout tokens only (a tree mask), so one forward per step serves all positions."""
    B, C = blocks.shape
    P = starts.shape[0]
    dev = blocks.device
    cache = model.backbone.make_cache(B, C + (NGRAM - 1) * P, dev, model.tok_emb.weight.dtype)
    logits = model.lm_head(model.backbone(model.tok_emb(blocks), cache=cache))  # (B, C, V)
    step_logits = logits[:, starts - 1]                                       # (B, P, V): p(. | block[:t])
    ctx_mask = torch.arange(C, device=dev)[None, :] < starts[:, None]         # (P, C)
    eye = torch.eye(P, dtype=torch.bool, device=dev)
    samples, sq = [], []
    for j in range(NGRAM):
        probs = F.softmax(step_logits.float(), -1)                            # (B, P, V)
        sq.append(probs.pow(2).sum(-1))
        tok = sample_logits(step_logits.flatten(0, 1), temperature, generator=generator).view(B, P)
        samples.append(tok)
        if j == NGRAM - 1:
            break
        mask = torch.cat([ctx_mask] + [eye] * (j + 1), dim=1)                 # (P, C + (j+1) P)
        h = model.backbone(model.tok_emb(tok), cache=cache, pos=starts + j, mask=mask)  # (B, P, d)
        step_logits = model.lm_head(h)
    return logits, torch.stack(samples, -1), torch.stack(sq, -1)


@torch.no_grad()
def gpt_brier(model, blocks: torch.Tensor, stride: int = 4, exact: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """blocks (B, C) -> estimates (B, P, 4) at starts t = stride, 2 stride, ..., <= C - 4."""
    B, C = blocks.shape
    starts = torch.arange(stride, C - NGRAM + 1, stride, device=blocks.device)  # (P,)
    if starts.numel() == 0:
        raise ValueError(f"blocks of {C} tokens leave no position with context and {NGRAM} tokens to predict")
    both = torch.cat([blocks, blocks])                                        # (2B, C): streams a and b
    logits, samples, sq = _rollouts(model, both, starts, generator)
    a, b = samples[:B], samples[B:]                                           # (B, P, 4)
    target = blocks[:, starts[:, None] + torch.arange(NGRAM, device=blocks.device)]  # (B, P, 4)
    if not exact:
        return brier_estimate(a.flatten(0, 1), b.flatten(0, 1), target.flatten(0, 1)).view(B, -1, NGRAM)
    idx = starts[:, None] + torch.arange(NGRAM, device=blocks.device) - 1    # (P, 4): logits predicting target
    logp = F.log_softmax(logits[:B].float(), -1)[:, idx]                      # (B, P, 4, V)
    p_target = logp.gather(-1, target[..., None]).squeeze(-1).cumsum(-1).exp()  # (B, P, 4): P(y_1..n)
    same_prefix = torch.cat([torch.ones_like(a[..., :1]), (a == b).long().cumprod(-1)[..., :-1]], -1)  # 1[a_<n = b_<n]
    collision = same_prefix * 0.5 * (sq[:B] + sq[B:])                         # (B, P, 4)
    return 2 * p_target - collision


@torch.no_grad()
def evaluate_brier(model, blocks: torch.Tensor, batch_size: int = 16, exact: bool = True, seed: int = 0,
                   n_boot: int = 1000) -> dict:
    """BrierLM of a CALM or GPT model on blocks (n, C), with bootstrap standard errors."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    ests, groups = [], []
    for i in range(0, blocks.shape[0], batch_size):
        x = blocks[i:i + batch_size].to(dev)
        e = calm_brier(model, x, g) if model.kind == 'calm' else gpt_brier(model, x, 4, exact, g)  # (b, P, 4)
        ests.append(e.flatten(0, 1).cpu())
        groups.append(torch.arange(i, i + x.shape[0]).repeat_interleave(e.shape[1]))
    return summarize(torch.cat(ests), torch.cat(groups), n_boot, seed)
