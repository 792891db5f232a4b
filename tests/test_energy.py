"""The energy loss and the energy head (docs/method.md section 4). Statistical checks use fixed seeds; each
states its false-alarm rate (the chance a correct implementation fails)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from calm_min.energy_head import EnergyHead, _Distances, energy_loss


def naive_energy_loss(x, y, alpha):
    N, M = x.shape[0], y.shape[0]
    out = torch.zeros(x.shape[1:-1], dtype=torch.float64)
    for n in range(N):
        for m in range(M):
            out += 2 / (N * M) * (x[n] - y[m]).double().norm(dim=-1) ** alpha
        for k in range(N):
            if k != n:
                out -= 1 / (N * (N - 1)) * (x[n] - x[k]).double().norm(dim=-1) ** alpha
    return out


shapes = st.tuples(st.integers(2, 6), st.integers(1, 7), st.integers(1, 3), st.integers(1, 5))


@given(shapes, st.sampled_from([0.5, 1.0, 1.5, 2.0]), st.integers(0, 10**6))
@settings(max_examples=30, deadline=None)
def test_matches_naive_double_loop(shape, alpha, seed):
    N, M, P, D = shape
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, P, D, generator=g), torch.randn(M, P, D, generator=g)
    torch.testing.assert_close(energy_loss(x, y, alpha).double(), naive_energy_loss(x, y, alpha), atol=1e-4, rtol=1e-4)


@given(shapes, st.sampled_from([0.5, 1.0, 2.0]), st.integers(0, 10**6))
@settings(max_examples=30, deadline=None)
def test_gradients_match_the_naive_double_loop(shape, alpha, seed):
    """The gradients with respect to samples and targets (the sample-target distances have a written-out
    backward, `_Distances`) against autograd through the double loop in float64."""
    N, M, P, D = shape
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, P, D, generator=g).requires_grad_(), torch.randn(M, P, D, generator=g).requires_grad_()
    gx, gy = torch.autograd.grad(energy_loss(x, y, alpha).sum(), (x, y))
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    ex, ey = torch.autograd.grad(naive_energy_loss(x64, y64, alpha).sum(), (x64, y64))
    torch.testing.assert_close(gx.double(), ex, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(gy.double(), ey, atol=1e-4, rtol=1e-3)


def test_sample_target_distances_pass_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randn(3, 6, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_Distances.apply, (x, y))


def test_sample_target_distances_are_accurate_in_float32_at_latent_scale():
    """The expansion |x|^2 + |y|^2 - 2 x.y loses digits where distances are small beside the points'
    norms. At l = 128, with the points about 34 from the origin and about 6 apart, the distances stay
    within 1e-4 (relative) of the exact kernel's."""
    g = torch.Generator().manual_seed(0)
    mu = 3 * torch.randn(64, 1, 128, generator=g)
    x, y = mu + 0.1 * torch.randn(64, 8, 128, generator=g), mu + 0.5 * torch.randn(64, 100, 128, generator=g)
    exact = torch.cdist(x.double(), y.double(), compute_mode='donot_use_mm_for_euclid_dist')
    torch.testing.assert_close(_Distances.apply(x, y).double(), exact, rtol=1e-4, atol=0)


def test_the_loss_stays_float32_under_bf16_autocast():
    """Under autocast the distances' matrix products would run in bf16 (8 bits of mantissa), and the
    expansion would lose the distances; energy_loss computes them in float32 all the same."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 128, generator=g)
    x, y = mu + 0.3 * torch.randn(8, 64, 128, generator=g), mu + 0.5 * torch.randn(100, 64, 128, generator=g)
    x.requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = energy_loss(x, y)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    x32 = x.detach().requires_grad_()
    loss32 = energy_loss(x32, y)
    torch.testing.assert_close(loss, loss32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, torch.autograd.grad(loss32.sum(), x32)[0], rtol=1e-4, atol=1e-6)


@given(shapes, st.integers(0, 10**6))
@settings(max_examples=30, deadline=None)
def test_invariances(shape, seed):
    N, M, P, D = shape
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, P, D, generator=g), torch.randn(M, P, D, generator=g)
    base = energy_loss(x, y)
    # permuting samples or targets
    torch.testing.assert_close(energy_loss(x[torch.randperm(N, generator=g)], y[torch.randperm(M, generator=g)]), base,
                               atol=1e-5, rtol=1e-5)
    # translating and rotating both sets together
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g))
    shift = torch.randn(D, generator=g) * 3
    torch.testing.assert_close(energy_loss(x @ q + shift, y @ q + shift), base, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0])
def test_finite_gradient_when_samples_coincide(alpha):
    x = torch.zeros(8, 3, 4, requires_grad=True)        # the zero-initialised head at step 0
    y = torch.randn(10, 3, 4)
    y[0, 0] = 0                                         # and a target that coincides with them
    loss = energy_loss(x, y, alpha).sum()
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match='at least 2 model samples'):
        energy_loss(torch.randn(1, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match=r'alpha must be in \(0, 2\]'):
        energy_loss(torch.randn(2, 3, 2), torch.randn(4, 3, 2), alpha=2.5)
    with pytest.raises(ValueError, match='must agree'):
        energy_loss(torch.randn(2, 3, 2), torch.randn(4, 3, 5))


@pytest.mark.parametrize('alpha', [1.0, 1.5])
def test_proper(alpha):
    """Expected loss (over many seeds) is lowest for samples from the target itself, against
    shifted, over-dispersed and under-dispersed models. Each comparison uses 8000 independent
    positions; the margin is > 6 standard errors of the difference (false-alarm rate < 1e-8)."""
    g = torch.Generator().manual_seed(0)
    P, D, N, M = 8000, 3, 4, 4
    mean = torch.randn(P, D, generator=g)
    scale = torch.rand(P, D, generator=g) + 0.5
    draw = lambda n, s=1.0, shift=0.0: mean + shift + s * scale * torch.randn(n, P, D, generator=g)
    target = draw(M)
    right = energy_loss(draw(N), target, alpha)
    for name, wrong in {'shifted': draw(N, shift=0.7), 'over': draw(N, s=1.8), 'under': draw(N, s=0.5)}.items():
        diff = energy_loss(wrong, target, alpha) - right
        z = diff.mean() / (diff.std() / math.sqrt(P))
        assert z > 6, (name, float(z))


@pytest.mark.parametrize('D', [2, 8])
def test_head_learns_a_gaussian_mixture(D):
    """A head conditioned on a constant h fits a fixed 2-component mixture: the sample mean and
    covariance end up within 0.25 (absolute, per entry; the entries are 1 to 2.3, and a head that
    collapsed to the mean would miss by > 1) of the mixture's. With 4000 evaluation samples the
    Monte-Carlo error of each entry is < 0.04, so sampling noise alone cannot cause a failure."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    means = torch.stack([torch.full((D,), -1.0), torch.full((D,), 1.0)])
    means[1, 0] = 2.0
    std = 0.3

    def mixture(n):
        comp = torch.randint(2, (n,), generator=g)
        return means[comp] + std * torch.randn(n, D, generator=g)

    head = EnergyHead(32, D, noise_size=16, n_blocks=2)
    h = torch.zeros(64, 32)                                  # a batch of 64 positions, same condition
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    for _ in range(600):
        loss = energy_loss(head(h, 8, g), mixture(32 * 64).view(32, 64, D)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        s = head(h[:1], 4000, g)[:, 0]                       # (4000, D)
    ref = mixture(200000)
    assert (s.mean(0) - ref.mean(0)).abs().max() < 0.25
    assert (torch.cov(s.T) - torch.cov(ref.T)).abs().max() < 0.25


def test_head_starts_with_every_sample_equal():
    """The zero-initialised output layer (docs/method.md section 4): at step 0 every sample is the same
    vector, zero, whatever the noise and the condition, and one gradient step moves the samples apart."""
    torch.manual_seed(0)
    head = EnergyHead(32, 8, noise_size=16, n_blocks=2)
    h = torch.randn(3, 5, 32)
    s = head(h, 6, torch.Generator().manual_seed(0))                      # (6, 3, 5, 8)
    assert s.shape == (6, 3, 5, 8) and torch.equal(s, torch.zeros_like(s))
    energy_loss(s, torch.randn(10, 3, 5, 8)).mean().backward()
    with torch.no_grad():
        head.final_out.weight -= 0.1 * head.final_out.weight.grad
        s = head(h, 6, torch.Generator().manual_seed(0))
    assert s.std(0).min() > 0


def test_head_noise_is_uniform_on_the_centred_unit_cube():
    """eps ~ U[-0.5, 0.5]^noise_size (docs/method.md section 4): 64000 draws, range and mean and
    variance (1/12) within 5 standard errors (false-alarm rate about 1e-6 for the two)."""
    head = EnergyHead(32, 8, noise_size=16, n_blocks=1)
    eps = head.noise(torch.zeros(100, 32), 40, torch.Generator().manual_seed(0))   # (40, 100, 16)
    assert eps.shape == (40, 100, 16) and eps.min() >= -0.5 and eps.max() < 0.5
    n = eps.numel()
    assert abs(eps.mean()) < 5 * math.sqrt(1 / 12 / n)
    assert abs(eps.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)       # var of (U - 1/2)^2 is 1/180
