"""Likelihood-free temperature samplers (docs/method.md section 6).

Statistical checks use fixed seeds. Chi-square tests use the critical value at significance 1e-4
for their degrees of freedom (bins with an expected count under 5 are merged), so each check would
fail a correct sampler with probability 1e-4; the 20 exact-sampler checks together 2e-3. Mean-cost
and proportion checks allow 5 standard errors (two-sided false-alarm rate 6e-7 each)."""
import math

import pytest
import torch

from calm_min.sampling import (SamplingBudgetExceeded, batch_temperature_probs, batch_temperature_sample,
                               bernoulli_power, exact_temperature_sample, expected_draws, sample_logits)

CHI2_CRIT_1E4 = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74, 6: 27.86}


def chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> tuple[bool, float]:
    """Pearson chi-square against `probs`; bins (largest expectation first) are merged until each
    expects at least 5 counts."""
    exp = probs.double() * counts.sum()
    obs_b, exp_b = [], []
    for i in torch.argsort(exp, descending=True).tolist():
        if exp_b and exp_b[-1] < 5:
            obs_b[-1] += float(counts[i])
            exp_b[-1] += float(exp[i])
        else:
            obs_b.append(float(counts[i]))
            exp_b.append(float(exp[i]))
    if len(exp_b) > 1 and exp_b[-1] < 5:
        o, e = obs_b.pop(), exp_b.pop()
        obs_b[-1] += o
        exp_b[-1] += e
    stat = sum((o - e) ** 2 / e for o, e in zip(obs_b, exp_b))
    return len(exp_b) == 1 or stat < CHI2_CRIT_1E4[len(exp_b) - 1], stat


def categorical_draw(probs, g):
    """draw(m) -> (m, 2): outcome i encoded as the row (i, 7 * i)."""
    def draw(m):
        i = torch.multinomial(probs, m, replacement=True, generator=g)
        return torch.stack([i, 7 * i], 1)
    return draw


DISTS = [torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03]), torch.tensor([0.4, 0.4, 0.2]),
         torch.tensor([0.6, 0.1, 0.1, 0.1, 0.05, 0.05])]


@pytest.mark.parametrize('T', [1.0, 0.5, 1 / 3, 0.7, 0.85, 0.25])
@pytest.mark.parametrize('d', range(len(DISTS)))
def test_exact_sampler_matches_tempered_distribution(d, T):
    p = DISTS[d]
    g = torch.Generator().manual_seed(d * 10 + int(T * 100))
    draw = categorical_draw(p, g)
    n = 1500
    outs, costs = [], []
    for _ in range(n):
        x, used = exact_temperature_sample(draw, T, g)
        outs.append(int(x[0]))
        costs.append(used)
        assert x[1] == 7 * x[0]                    # a whole outcome row comes back
    target = p.pow(1 / T) / p.pow(1 / T).sum()
    ok, stat = chi2_ok(torch.bincount(torch.tensor(outs), minlength=len(p)), target)
    assert ok, stat
    c = torch.tensor(costs, dtype=torch.float64)
    assert abs(c.mean() - expected_draws(p, T)) < 5 * c.std() / math.sqrt(n) + 1e-6


@pytest.mark.parametrize('p', [0.05, 0.5, 0.8])
@pytest.mark.parametrize('a', [0.25, 0.75])
def test_bernoulli_factory_shows_true_with_probability_p_to_the_a(p, a):
    """Algorithm 1's fractional stage alone: the chi-square above sees it only through the whole
    tempered distribution, too weakly to notice a wrong stopping rule (a / (i + 1) for a / i moves
    these six cases by 16-61 standard errors at 20000 trials; 5 allowed, false-alarm rate 6e-7 each)."""
    g = torch.Generator().manual_seed(int(100 * p + 10 * a))
    coins = iter((torch.rand(200_000, generator=g) < p).tolist())
    n = 20_000
    hits = sum(bernoulli_power(lambda: next(coins), a, g) for _ in range(n))
    assert abs(hits / n - p ** a) < 5 * math.sqrt(p ** a * (1 - p ** a) / n)


def test_exact_sampler_budget_and_bad_temperatures():
    g = torch.Generator().manual_seed(0)
    draw = categorical_draw(torch.ones(50) / 50, g)
    with pytest.raises(SamplingBudgetExceeded, match='max_draws=100'):
        exact_temperature_sample(draw, 0.1, g, max_draws=100)
    for bad in (0, -0.5, 1.5, float('nan')):
        with pytest.raises(ValueError, match='temperature must be in'):
            exact_temperature_sample(draw, bad, g)


def letters(s):
    return torch.tensor([[ord(c)] for c in s])


def test_paper_worked_example_exactly():
    pool = letters('ACADBEAFBG')[None]                      # (1, 10, 1)
    probs = batch_temperature_probs(pool, 0.5)[0]
    out = {chr(c): float(probs[letters('ACADBEAFBG')[:, 0] == c].sum()) for c in map(ord, 'ABCDEFG')}
    assert out['A'] == pytest.approx(0.75, abs=1e-12) and out['B'] == pytest.approx(0.25, abs=1e-12)
    assert sum(v for k, v in out.items() if k not in 'AB') == 0
    # and the sampler draws from exactly that: 20000 rows, 5 standard errors
    g = torch.Generator().manual_seed(0)
    picks = batch_temperature_sample(pool.expand(20000, -1, -1), 0.5, g)[:, 0]
    frac_a = (picks == ord('A')).double().mean()
    assert abs(frac_a - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 20000)
    assert set(picks.tolist()) == {ord('A'), ord('B')}


def test_falls_back_to_lower_levels():
    # T = 1/3: no outcome appears 3 times; A appears twice -> m = 2 -> A for sure
    assert batch_temperature_probs(letters('AABCD')[None], 1 / 3)[0].tolist() == [0.5, 0.5, 0, 0, 0]
    # all distinct -> m = 1 -> uniform
    torch.testing.assert_close(batch_temperature_probs(letters('ABCD')[None], 0.5)[0].float(), torch.full((4,), 0.25))


def test_rows_are_independent_and_vectorised():
    pool = torch.stack([letters('AAB'), letters('BCC'), letters('DDD')])  # (3, 3, 1)
    out = batch_temperature_sample(pool, 0.5, torch.Generator().manual_seed(0))
    assert out[:, 0].tolist() == [ord('A'), ord('C'), ord('D')]


def test_batch_sampler_large_pool_approaches_target():
    """N = 1000 draws per row, 2000 rows, T = 1/2: the output distribution is within 0.04 total
    variation of P^2/Z (its sampling noise has mean about 0.01 and sd about 0.005: a false alarm
    needs a 6-sigma excursion)."""
    p = torch.tensor([0.45, 0.3, 0.15, 0.1])
    g = torch.Generator().manual_seed(0)
    pool = torch.multinomial(p, 2000 * 1000, replacement=True, generator=g).view(2000, 1000, 1)
    out = batch_temperature_sample(pool, 0.5, g)[:, 0]
    freq = torch.bincount(out, minlength=4).double() / 2000
    target = (p.pow(2) / p.pow(2).sum()).double()
    assert 0.5 * (freq - target).abs().sum() < 0.04


def test_batch_sampler_small_pool_is_sharper_than_p():
    """N = 4 at T = 1/2 concentrates on the mode more than P itself does (the paper's bias)."""
    p = torch.tensor([0.4, 0.2, 0.2, 0.2])
    g = torch.Generator().manual_seed(0)
    pool = torch.multinomial(p, 20000 * 4, replacement=True, generator=g).view(20000, 4, 1)
    out = batch_temperature_sample(pool, 0.5, g)[:, 0]
    mode = (out == 0).double().mean()
    assert mode > 0.4 + 5 * math.sqrt(0.4 * 0.6 / 20000)


def test_batch_sampler_bad_temperatures():
    pool = letters('AB')[None]
    for bad in (0.7, 0.3):
        with pytest.raises(ValueError, match='T = 1/n'):
            batch_temperature_sample(pool, bad)
    for bad in (0, -1, 2, float('nan')):
        with pytest.raises(ValueError, match='temperature must be in'):
            batch_temperature_sample(pool, bad)
    with pytest.raises(ValueError, match=r'\(B, N, K\)'):
        batch_temperature_sample(letters('AB'), 0.5)


@pytest.mark.parametrize('temperature,top_k', [(1.0, 0), (0.5, 0), (2.0, 0), (1.0, 3)])
def test_sample_logits_matches_softmax(temperature, top_k):
    """The baseline's Gumbel-max sampling draws from softmax(logits / T) restricted to the top k:
    chi-square on 20000 draws per case, fixed seed (false-alarm rate 1e-4 each, as above)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([1.0, 0.3, -0.5, 2.0, 0.0, -1.2])
    draws = sample_logits(logits.expand(20000, -1), temperature, top_k, g)
    p = torch.softmax(logits / temperature, -1)
    if top_k:
        keep = torch.zeros(6, dtype=torch.bool)
        keep[torch.topk(logits, top_k).indices] = True
        assert keep[draws].all(), "a token outside the top k was drawn"
        p = torch.where(keep, p, torch.zeros_like(p)) / p[keep].sum()
    ok, stat = chi2_ok(torch.bincount(draws, minlength=6), p)
    assert ok, stat


def test_exact_sampler_compares_whole_outcomes():
    """Outcomes that share their first token are still different outcomes: both stages of Algorithm 1
    (the n identical draws and the fractional stage's coin) compare whole rows. Four 2-token outcomes,
    two per first token; at T = 0.5 and 0.7 a sampler that compared first tokens only would return
    P's own split within a first token instead of the tempered one (chi-square at 1e-4 each, as above)."""
    rows = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    p = torch.tensor([0.6, 0.1, 0.2, 0.1])
    for T in (0.5, 0.7):
        g = torch.Generator().manual_seed(int(T * 10))
        draw = lambda m: rows[torch.multinomial(p, m, replacement=True, generator=g)]
        outs = [exact_temperature_sample(draw, T, g)[0] for _ in range(1500)]
        idx = torch.tensor([int(x[0]) * 2 + int(x[1]) for x in outs])
        target = p.pow(1 / T) / p.pow(1 / T).sum()
        ok, stat = chi2_ok(torch.bincount(idx, minlength=4), target)
        assert ok, (T, stat)


def test_exact_sampler_never_draws_past_its_budget():
    """max_draws bounds the outcomes drawn, not only the count reported: the call that would pass it
    raises before drawing."""
    g = torch.Generator().manual_seed(0)
    inner, drawn = categorical_draw(torch.ones(50) / 50, g), []
    draw = lambda m: drawn.append(m) or inner(m)
    with pytest.raises(SamplingBudgetExceeded):
        exact_temperature_sample(draw, 0.1, g, max_draws=105)           # n = 10 draws per round
    assert sum(drawn) == 100                                            # ten rounds, not an eleventh


def test_top_k_above_the_vocabulary_keeps_every_token():
    """top_k >= V filters nothing (sample.py accepts any top_k >= 0): the same draws as top_k = 0."""
    logits = torch.randn(3, 7, generator=torch.Generator().manual_seed(0))
    for k in (7, 50):
        a = sample_logits(logits, 0.8, k, torch.Generator().manual_seed(1))
        b = sample_logits(logits, 0.8, 0, torch.Generator().manual_seed(1))
        assert torch.equal(a, b)
