"""BrierLM (docs/method.md section 5). Statistical checks use fixed seeds and allow 5 standard errors of the
estimator's own sample variance (two-sided false-alarm rate 6e-7 per comparison)."""
import itertools
import math
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

from calm_min.backbone import BackboneConfig
from calm_min.brierlm import brier_estimate, brierlm, estimate, exact_brier, summarize
from calm_min.gpt import GPT, GPTConfig
from calm_min.sampling import Sampler
from test_calm import tiny_calm

BRIERLM_MODULE = sys.modules['calm_min.brierlm']   # the module itself: the package exports the function brierlm


def joint(V, n, g):
    """A random distribution over n-grams of a V-token vocabulary: probs (V**n,), outcomes (V**n, n)."""
    probs = torch.distributions.Dirichlet(torch.full((V ** n,), 0.5)).sample()
    outcomes = torch.tensor(list(itertools.product(range(V), repeat=n)))
    return probs.double(), outcomes


@given(seed=st.integers(0, 10**6))
@settings(max_examples=10, deadline=None, derandomize=True)
def test_two_sample_estimate_is_unbiased(seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    V, n, S = 3, 3, 20000
    probs, outcomes = joint(V, n, g)
    y = outcomes[torch.multinomial(probs, 1, generator=g)].expand(S, n)                 # a fixed target
    a = outcomes[torch.multinomial(probs, S, replacement=True, generator=g)]
    b = outcomes[torch.multinomial(probs, S, replacement=True, generator=g)]
    est = brier_estimate(a, b, y).double()                                                # (S, n)
    for j in range(n):  # Brier-(j+1) scores the first j+1 tokens: marginalise the joint
        keys = outcomes[:, :j + 1]
        marg_keys, inv = torch.unique(keys, dim=0, return_inverse=True)
        marg = torch.zeros(len(marg_keys), dtype=torch.float64).index_add_(0, inv, probs)
        yi = (marg_keys == y[0, :j + 1]).all(1).nonzero()[0, 0]
        exact = exact_brier(marg, yi)
        se = est[:, j].std() / math.sqrt(S)
        assert abs(est[:, j].mean() - exact) < 5 * se + 1e-9


@given(seed=st.integers(0, 10**6), eps=st.floats(0.05, 0.9))
@settings(max_examples=30, deadline=None)
def test_proper(seed, eps):
    """E_{y~Q} Brier(P, y) = sum Q^2 - sum (P - Q)^2: the true model beats any perturbed one."""
    g = torch.Generator().manual_seed(seed)
    flat_dirichlet = lambda: (e := -torch.rand(6, generator=g, dtype=torch.float64).log()) / e.sum()
    q, noise = flat_dirichlet(), flat_dirichlet()
    p = (1 - eps) * q + eps * noise
    score = lambda m: float((q * exact_brier(m.expand(6, 6), torch.arange(6))).sum())
    assert score(q) == pytest.approx(float(q.pow(2).sum()))
    assert score(q) > score(p) or torch.allclose(p, q)
    assert score(p) == pytest.approx(float(q.pow(2).sum() - (p - q).pow(2).sum()))


def test_ranges_and_clamp():
    t = torch.randint(10, (50, 4))
    perfect = brier_estimate(t, t, t)
    assert (perfect == 1).all() and brierlm(perfect.mean(0)) == pytest.approx(100.0)
    never = brier_estimate(t + 10, t + 20, t)                      # never the target, never each other
    assert (never == 0).all() and brierlm(never.mean(0)) == 0
    confident_wrong = brier_estimate(t + 10, t + 10, t)            # agree with each other, never the target
    assert (confident_wrong == -1).all() and brierlm(confident_wrong.mean(0)) == 0
    assert brierlm([0.5, 0.4, -0.1, 0.2]) == 0
    assert brierlm([0.8, 0.4, 0.2, 0.1]) == pytest.approx(100 * 0.0064 ** 0.25)   # the geometric mean
    assert brierlm([0.3] * 4) == pytest.approx(30.0)
    with pytest.raises(ValueError, match='Brier-1..4'):
        brierlm([0.5, 0.4])
    with pytest.raises(ValueError, match='share one'):
        brier_estimate(t, t[:, :3], t)


@pytest.mark.parametrize('sizes', ['equal', 'unequal'])
def test_summarize_standard_errors(sizes):
    """Independent Bernoulli estimates in blocks: the block bootstrap's standard error of each mean is
    the plain sqrt(p (1-p) / n), within 25% (400 replicates: the SE's own sampling error is ~4%, so 25% is 6 of them; fixed seeds). Blocks
    of 1 to 39 positions check that a replicate's mean divides by its own positions, not by n."""
    g = torch.Generator().manual_seed(0)
    est = (torch.rand(4000, 4, generator=g) < torch.tensor([0.5, 0.3, 0.2, 0.1])).double()
    if sizes == 'equal':
        groups = torch.arange(4000) // 10
    else:
        groups = torch.arange(400).repeat_interleave(torch.arange(400) % 39 + 1)[:4000]
    out = summarize(est, groups, n_boot=400)
    assert out['positions'] == 4000 and out['blocks'] == int(groups.max()) + 1
    for n, p in enumerate([0.5, 0.3, 0.2, 0.1], 1):
        assert out[f'brier{n}'] == pytest.approx(float(est[:, n - 1].mean()))
        assert out[f'brier{n}_se'] == pytest.approx(math.sqrt(p * (1 - p) / 4000), rel=0.25)
    assert out['brierlm'] == pytest.approx(brierlm([out[f'brier{n}'] for n in range(1, 5)]))
    # BrierLM's own SE: by the delta method, with independent columns, BrierLM x sqrt(sum_n (se_n / p_n)^2) / 4
    rel = math.sqrt(sum((1 - p) / (p * 4000) for p in (0.5, 0.3, 0.2, 0.1))) / 4
    assert out['brierlm_se'] == pytest.approx(out['brierlm'] * rel, rel=0.25)


def test_evaluate_brier_bootstraps_over_blocks(monkeypatch):
    """The bootstrap resamples whole blocks: each position's group is the index of its block."""
    seen, summarize_ = {}, BRIERLM_MODULE.summarize
    monkeypatch.setattr(BRIERLM_MODULE, 'summarize', lambda est, groups, *a: seen.update(groups=groups) or summarize_(est, groups, *a))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, backbone=BackboneConfig(n_layer=1, n_head=2, n_embd=16))).eval()
    out = BRIERLM_MODULE.evaluate_brier(model, torch.randint(7, (5, 16)), batch_size=2, n_boot=20)   # 3 positions each
    assert out['blocks'] == 5 and torch.equal(seen['groups'], torch.arange(5).repeat_interleave(3))


def test_discrete_estimators_agree():
    """The generic two-sample estimator and the exact/low-variance one have the same expectation:
    on a tiny model, over 60 repetitions of 4 blocks, their means agree within 5 standard errors."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=5, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(8)  # sharper, more varied next-token distributions
    blocks = torch.randint(5, (4, 24), generator=torch.Generator().manual_seed(1)).repeat(60, 1)
    g = torch.Generator().manual_seed(2)
    sampled = estimate(model.continuations(blocks, generator=g), exact=False).flatten(0, 1).double()
    exact = estimate(model.continuations(blocks, generator=g), exact=True).flatten(0, 1).double()
    assert sampled.shape == exact.shape == (240 * 5, 4)
    for n in range(4):
        se = math.sqrt(sampled[:, n].var() / len(sampled) + exact[:, n].var() / len(exact))
        assert abs(sampled[:, n].mean() - exact[:, n].mean()) < 5 * se
        assert exact[:, n].var() < sampled[:, n].var()              # the point of the exact estimator


def test_parallel_rollout_matches_sequential_generation():
    """The tree-masked rollout of every position equals generate() from each prefix on its own."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    block = torch.randint(7, (1, 16))
    cont = model.continuations(block, generator=torch.Generator().manual_seed(0))   # starts 4, 8, 12
    samples, sq = cont['samples'], cont['sum_sq']                                   # (2, 1, 3, 4) each
    # recompute the probabilities along the sampled rollouts (both streams) by full forward passes
    for stream in range(2):
        for p, t in enumerate((4, 8, 12)):
            seq = torch.cat([block[0, :t], samples[stream, 0, p]])[None]
            logits, _ = model(seq)
            probs = torch.softmax(logits[0, t - 1:t + 3], -1)
            torch.testing.assert_close(sq[stream, 0, p], probs.pow(2).sum(-1), atol=1e-5, rtol=1e-5)


def test_calm_estimator_uses_two_independent_draws():
    model = tiny_calm()
    blocks = torch.randint(40, (8, 32))
    est = estimate(model.continuations(blocks, generator=torch.Generator().manual_seed(0)))
    assert est.shape == (8, 7, 4)
    # one latent decoded twice would give a == b everywhere: every estimate would be +1 or -1
    assert (est == 0).float().mean() > 0.5


@pytest.mark.parametrize('K', [1, 2, 3])
def test_calm_estimator_for_small_k(K):
    """K < 4: each sample is a rollout of ceil(4/K) chunks; positions whose chunks hold 4 tokens."""
    model = tiny_calm(K=K)
    R = -(-4 // K)
    L = 9
    est = estimate(model.continuations(torch.randint(40, (3, L * K)), generator=torch.Generator().manual_seed(0)))
    assert est.shape == (3, L - R, 4) and est.min() >= -1 and est.max() <= 2
    with pytest.raises(ValueError, match='at least'):
        model.continuations(torch.randint(40, (2, R * K)))


@pytest.mark.parametrize('K', [1, 2])
def test_calm_rollouts_match_full_recomputation(K):
    """The tree-masked rollouts draw each chunk from the hidden state that a full forward pass over
    context + the earlier rolled-out chunks gives."""
    model = tiny_calm(K=K)
    x = torch.randint(40, (2, 10, K))
    starts = torch.tensor([1, 4, 6])
    R = -(-4 // K)
    toks, hs = model.rollouts(x, starts, R, generator=torch.Generator().manual_seed(0))
    assert toks.shape == (2, 3, R * K) and hs.shape == (2, 3, R, 64)
    for p, i in enumerate(starts.tolist()):
        for j in range(R):
            seq = torch.cat([x[:, :i], toks[:, p, :j * K].view(2, j, K)], 1)
            torch.testing.assert_close(hs[:, p, j], model.hidden(seq)[:, -1], atol=1e-5, rtol=1e-5)


def test_calm_fast_path_equals_one_chunk_rollout():
    """For K >= 4 continuations draws both samples from one head call; a 1-chunk rollout of two stacked
    streams draws the same noise in the same order, so the estimates are identical."""
    model = tiny_calm(K=4)
    blocks = torch.randint(40, (3, 24))
    fast = estimate(model.continuations(blocks, generator=torch.Generator().manual_seed(3)))
    x = model.chunks(blocks)
    toks, _ = model.rollouts(torch.cat([x, x]), torch.arange(1, 6), 1, generator=torch.Generator().manual_seed(3))
    slow = brier_estimate(toks[:3].flatten(0, 1), toks[3:].flatten(0, 1), x[:, 1:].flatten(0, 1)).view(3, 5, 4)
    assert torch.equal(fast, slow)
    # the samples themselves, not only the estimates (with rare hits, unequal samples mostly score alike)
    samples = model.continuations(blocks, generator=torch.Generator().manual_seed(3))['samples']   # (2, 3, 5, 4)
    assert torch.equal(samples, toks.unflatten(0, (2, 3)))


@pytest.mark.parametrize('kind', ['gpt', 'calm K=4', 'calm K=2'])
def test_continuations_see_only_the_past(kind):
    """BrierLM's samples at a scored position must not depend on the tokens they are scored against:
    with one generator, changing the tokens from position j on leaves every sample whose context ends
    at or before j as it was, and changes the targets there."""
    if kind == 'gpt':
        torch.manual_seed(0)
        model, K = GPT(GPTConfig(vocab_size=40, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval(), 1
        starts = torch.arange(4, 21, 4)                                   # token positions scored
    else:
        K = int(kind[-1])
        model = tiny_calm(K=K)
        starts = torch.arange(1, 24 // K - (4 // K) + 1) * K              # chunk positions, in tokens
    with torch.no_grad():                                 # so that the samples depend on the context:
        model.tok_emb.weight.mul_(50)                     # at init they barely do, and a leak could hide
    blocks = torch.randint(40, (3, 24), generator=torch.Generator().manual_seed(1))
    before = model.continuations(blocks, generator=torch.Generator().manual_seed(2))
    j = 12
    changed = blocks.clone()
    changed[:, j:] = (changed[:, j:] + 1) % 40
    after = model.continuations(changed, generator=torch.Generator().manual_seed(2))
    past = starts <= j
    assert before['samples'].shape[2] == len(starts) and past.any() and not past.all()
    assert torch.equal(before['samples'][:, :, past], after['samples'][:, :, past])
    assert not torch.equal(before['target'][:, past], after['target'][:, past])
    assert not torch.equal(before['samples'][:, :, ~past], after['samples'][:, :, ~past])


def test_baseline_sum_of_squares_is_the_untempered_distributions():
    """The exact term sum_x p(x)^2 is the model's own distribution's, also when the samples are drawn
    at another temperature (the Brier score is of the model, not of its tempered sampler)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    torch.nn.init.normal_(model.tok_emb.weight, std=0.2)                     # logits neither uniform nor one-hot
    blocks = torch.randint(11, (2, 16), generator=torch.Generator().manual_seed(1))
    cont = model.continuations(blocks, Sampler(temperature=0.5), generator=torch.Generator().manual_seed(2))
    starts = torch.arange(4, 13, 4)
    with torch.no_grad():
        logits = model(blocks)[0][:, starts - 1].float()                    # (B, P, V)
    p, tempered = torch.softmax(logits, -1), torch.softmax(logits / 0.5, -1)
    assert (tempered.pow(2).sum(-1) - p.pow(2).sum(-1)).abs().min() > 1e-3      # the two differ at every position
    for stream in (0, 1):
        torch.testing.assert_close(cont['sum_sq'][stream, ..., 0], p.pow(2).sum(-1))


@pytest.mark.parametrize('kind', ['gpt', 'calm K=1', 'calm K=2', 'calm K=3', 'calm K=4'])
def test_targets_are_the_four_tokens_after_the_context(kind):
    """Each scored position's target is the 4 tokens that follow the context its samples were given:
    blocks[t:t + 4] at token position t = stride, 2 stride, ... (baseline) or t = i K for chunk
    positions i = 1, 2, ... (CALM)."""
    blocks = torch.randint(40, (2, 24), generator=torch.Generator().manual_seed(0))
    if kind == 'gpt':
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=40, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
        starts = list(range(4, 21, 4))
    else:
        K = int(kind[-1])
        model = tiny_calm(K=K)
        starts = [i * K for i in range(1, 24 // K - (-(-4 // K)) + 1)]
    target = model.continuations(blocks, generator=torch.Generator().manual_seed(1))['target']
    assert target.shape == (2, len(starts), 4)
    for p, t in enumerate(starts):
        assert torch.equal(target[:, p], blocks[:, t:t + 4])


def test_baseline_samples_are_drawn_at_the_samplers_temperature():
    """The baseline's BrierLM samples come from its softmax at the sampler's temperature: near T = 0 the
    first sampled token of both streams is the argmax at every position; at T = 1 it is at about a
    quarter of them (logits of near-uniform weights)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    blocks = torch.randint(11, (4, 24), generator=torch.Generator().manual_seed(1))
    starts = torch.arange(4, 21, 4)
    with torch.no_grad():
        greedy = model(blocks)[0][:, starts - 1].argmax(-1)                  # (B, P)
    first = lambda T: model.continuations(blocks, Sampler(temperature=T),
                                          generator=torch.Generator().manual_seed(2))['samples'][..., 0]  # (2, B, P)
    assert (first(1e-6) == greedy).all()
    assert (first(1.0) != greedy).float().mean() > 0.5


def test_two_sample_estimate_by_hand():
    """1[a = y] + 1[b = y] - 1[a = b] on hand-made 4-grams, column n scoring the first n tokens
    (a variant that counted a's hit twice would also be unbiased, but with more variance)."""
    y = torch.tensor([[1, 2, 3, 4]] * 4)
    a = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 4], [1, 2, 3, 4], [5, 2, 3, 4]])
    b = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 0, 3, 4], [5, 2, 3, 4]])
    expect = torch.tensor([[1., 1, 1, 1],        # a = b = y
                           [1, 1, 1, 1],         # b = y, a leaves at token 3
                           [1, 1, 1, 1],         # a = y, b leaves at token 2
                           [-1, -1, -1, -1]])    # a = b, both miss from token 1
    assert torch.equal(brier_estimate(a, b, y), expect)
    assert torch.equal(brier_estimate(b, a, y), expect)


def test_evaluate_brier_passes_its_sampler_and_estimator_on(monkeypatch):
    """evaluate_brier hands its sampler to the model's continuations and scores with the estimator
    asked for: exact=False gives the two-sample estimates (integers), exact=True the baseline's exact
    form (not integers)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, backbone=BackboneConfig(n_layer=1, n_head=2, n_embd=16))).eval()
    seen, summarize_, continuations = {}, BRIERLM_MODULE.summarize, model.continuations
    monkeypatch.setattr(BRIERLM_MODULE, 'summarize', lambda est, groups, *a: seen.update(est=est) or summarize_(est, groups, *a))
    monkeypatch.setattr(model, 'continuations', lambda x, **kw: seen.update(kw) or continuations(x, **kw))
    blocks = torch.randint(7, (4, 16))
    BRIERLM_MODULE.evaluate_brier(model, blocks, exact=False, n_boot=20, sampler=Sampler(temperature=0.5))
    assert seen['sampler'] == Sampler(temperature=0.5)
    assert torch.equal(seen['est'], seen['est'].round())
    BRIERLM_MODULE.evaluate_brier(model, blocks, exact=True, n_boot=20)
    assert not torch.equal(seen['est'], seen['est'].round())
