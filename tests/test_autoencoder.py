import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.checkpoint import state_hash


def tiny_ae(K=4, l=8, V=37, **kw):
    torch.manual_seed(0)
    return Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=l, dim=32, hidden=64, **kw))


@given(K=st.integers(1, 6), l=st.integers(1, 12), lead=st.lists(st.integers(1, 3), min_size=1, max_size=2))
@settings(max_examples=20, deadline=None)
def test_shapes_and_dtypes(K, l, lead):
    ae = tiny_ae(K, l)
    x = torch.randint(37, (*lead, K))
    mu, log_sigma = ae.encode(x)
    assert mu.shape == log_sigma.shape == (*lead, l) and mu.dtype == torch.float32
    z = ae.sample_latent(mu, log_sigma, 5)
    assert z.shape == (5, *lead, l)
    assert ae.decode_logits(z).shape == (5, *lead, K, 37)
    tok = ae.decode(z)
    assert tok.shape == (5, *lead, K) and tok.dtype == torch.int64
    out, loss = ae(x)
    assert out['logits'].shape == (*lead, K, 37) and loss.dim() == 0


def test_kl_clip_gradient():
    """d(clipped KL)/d mu_j is exactly 0 where KL_j is below the floor and nonzero above it."""
    ae = tiny_ae(kl_clip=0.5)
    mu = torch.tensor([[0.1, 2.0, -0.3, 1.5]], requires_grad=True)   # KL_j = mu^2 / 2 at sigma = 1
    log_sigma = torch.zeros(1, 4, requires_grad=True)
    kl, clipped = ae.kl_terms(mu, log_sigma)
    clipped.sum().backward()
    below = kl.detach()[0] < 0.5
    assert below.tolist() == [True, False, True, False]
    assert (mu.grad[0][below] == 0).all() and (mu.grad[0][~below] != 0).all()
    assert (log_sigma.grad[0][below] == 0).all()
    # with the floor off, every dimension gets a gradient
    mu.grad = None
    ae.cfg.kl_clip = 0
    ae.kl_terms(mu, log_sigma)[1].sum().backward()
    assert (mu.grad[0] != 0).all()


@given(st.integers(0, 10**6))
@settings(max_examples=10)
def test_kl_is_the_kl_divergence_to_the_standard_normal(seed):
    g = torch.Generator().manual_seed(seed)
    mu, log_sigma = torch.randn(5, 8, generator=g) * 2, torch.randn(5, 8, generator=g)
    kl, clipped = tiny_ae(kl_clip=0.5).kl_terms(mu, log_sigma)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, log_sigma.exp()),
                                            torch.distributions.Normal(0.0, 1.0))        # (5, 8)
    torch.testing.assert_close(kl, ref)
    torch.testing.assert_close(clipped, ref.clamp_min(0.5).sum(-1))


def test_loss_is_summed_token_cross_entropy_plus_beta_times_clipped_kl():
    """docs/method.md section 2: cross-entropy summed over a chunk's K tokens, averaged over chunks."""
    ae = tiny_ae(kl_beta=0.3).eval()
    x = torch.randint(37, (6, 4))
    out, loss = ae(x, generator=torch.Generator().manual_seed(0))
    ce = torch.nn.functional.cross_entropy(out['logits'].flatten(0, 1), x.flatten(), reduction='none')
    _, clipped = ae.kl_terms(*ae.encode(x))
    torch.testing.assert_close(out['ce'], ce.view(6, 4).sum(-1).mean())
    torch.testing.assert_close(loss, ce.view(6, 4).sum(-1).mean() + 0.3 * clipped.mean())


def test_latent_dropout_zeroes_and_rescales():
    """Inverted dropout on the latent: each coordinate is zeroed with probability p and the kept ones
    are divided by 1 - p (so the decoder sees the same expected input in training and in eval)."""
    ae = tiny_ae(token_dropout=0.0, latent_dropout=0.4)
    seen = []
    ae.dec_in.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randint(37, (500, 4))
    ae.eval()
    ae(x, generator=torch.Generator().manual_seed(1))
    ae.train()
    ae(x, generator=torch.Generator().manual_seed(1))          # the same posterior draw, then dropout
    z, dropped = seen
    kept = dropped != 0
    torch.testing.assert_close(dropped[kept], z[kept] / 0.6)
    frac = 1 - kept.double().mean()                           # 4000 coordinates: SE 0.008; 5 SE (false alarms 6e-7)
    assert abs(frac - 0.4) < 5 * (0.4 * 0.6 / 4000) ** 0.5


def test_dropout_only_in_training_and_reproducible():
    ae = tiny_ae(token_dropout=0.5, latent_dropout=0.5)
    x = torch.randint(37, (64, 4))
    ae.eval()
    g = lambda: torch.Generator().manual_seed(3)
    a, la = ae(x, generator=g())
    b, lb = ae(x, generator=g())
    assert torch.equal(a['logits'], b['logits']) and la == lb        # same generator: same result
    ae.train()
    c, _ = ae(x, generator=g())
    assert not torch.allclose(a['logits'], c['logits'])              # training adds both dropouts
    # eval mode equals the deterministic path with the same posterior draw
    mu, ls = ae.encode(x)
    z = ae.sample_latent(mu, ls, generator=g())
    assert torch.equal(ae.decode_logits(z), a['logits'])


def test_token_dropout_uses_mask_id(monkeypatch):
    ae = tiny_ae(token_dropout=0.999, latent_dropout=0.0, mask_id=5)
    seen = {}
    orig = ae.encode
    monkeypatch.setattr(ae, 'encode', lambda t: seen.setdefault('t', t) is not None and orig(t))
    ae.train()
    ae(torch.randint(37, (32, 4)), generator=torch.Generator().manual_seed(0))
    assert (seen['t'] == 5).float().mean() > 0.99


def test_overfits_small_set_of_chunks():
    ae = tiny_ae(K=4, l=16, V=37, token_dropout=0.0, latent_dropout=0.0)
    x = torch.randint(37, (64, 4), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    ae.train()
    for _ in range(300):
        _, loss = ae(x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    mu, log_sigma = ae.encode(x)
    assert torch.equal(ae.decode(mu), x)
    assert torch.equal(ae.decode(ae.sample_latent(mu, log_sigma, generator=g)), x)


def test_bad_input_is_a_clear_error():
    ae = tiny_ae(K=4)
    with pytest.raises(ValueError, match=r'shape \(\.\.\., 4\)'):
        ae(torch.randint(37, (3, 5)))
    with pytest.raises(ValueError, match=r'token ids must be in \[0, 37\)'):
        ae(torch.tensor([[1, 2, 3, 40]]))
    with pytest.raises(ValueError, match='integer tensor'):
        ae(torch.zeros(2, 4))


def test_state_hash_changes_with_weights():
    ae = tiny_ae()
    h = state_hash(ae)
    assert h == state_hash(tiny_ae())
    with torch.no_grad():
        ae.emb.weight[0, 0] += 1e-3
    assert state_hash(ae) != h


def test_training_mode_scores_the_true_tokens():
    """Token dropout changes what the encoder reads, never what is scored: in training mode the
    cross-entropy and the accuracy are those of the logits against the original chunk."""
    ae = Autoencoder(AEConfig(vocab_size=37, chunk_size=4, latent_size=8, dim=32, hidden=64, token_dropout=0.5)).train()
    x = torch.randint(1, 37, (64, 4), generator=torch.Generator().manual_seed(0))     # mask_id 0 not among them
    out, _ = ae(x, generator=torch.Generator().manual_seed(1))
    logits = out['logits'].float()
    ce = F.cross_entropy(logits.flatten(0, -2), x.flatten(), reduction='none').view(x.shape).sum(-1).mean()
    torch.testing.assert_close(out['ce'], ce)
    assert out['acc'] == (logits.argmax(-1) == x).float().mean()
    with pytest.raises(ValueError, match=r'token ids must be in \[0, 37\)'):
        ae(torch.full((2, 4), 37))                                             # the first id past the vocabulary
