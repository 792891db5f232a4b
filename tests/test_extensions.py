"""CALM's training signal: the targets are posterior draws (not the mean), and the extension beyond the
paper (README, "Making CALM learn at small scale") is an exact no-op when off."""
import torch
import torch.nn.functional as F

from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.backbone import BackboneConfig
from calm_min.calm import CALM, CALMConfig
from calm_min.energy_head import energy_loss

V, K, L = 30, 4, 6


def make(seed=0, **kw):
    torch.manual_seed(seed)
    ae = Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=8, dim=32, hidden=64))
    with torch.no_grad():
        ae.enc_out.bias[8:] = -1.0                       # log sigma near -1: sigma about 0.37
    model = CALM(CALMConfig(backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64), head_blocks=1,
                            noise_size=8, n_targets=400, **kw), ae)
    torch.nn.init.normal_(model.head.final_out.weight, std=0.3)
    return model


def batch(seed=1):
    w = torch.randint(V, (3, L * K), generator=torch.Generator().manual_seed(seed))
    return w[:, :-K], w[:, K:]


def test_targets_are_posterior_draws_with_the_posterior_spread(monkeypatch):
    """The energy loss sees M draws y ~ N(mu, sigma^2) of the next chunk's posterior: their mean is mu
    and their per-dimension std is sigma = exp(log_sigma). Training against mu itself (std 0) or a
    sample_latent that ignores sigma fails here. With M = 400 draws the std estimate is within ~4%
    (3.5 standard errors for a normal's sample std is 12%, the tolerance used)."""
    model = make()
    seen = {}
    orig = energy_loss

    def spy(samples, targets, alpha=1.0):
        seen['y'] = targets
        return orig(samples, targets, alpha)
    monkeypatch.setattr('calm_min.calm.energy_loss', spy)
    x, t = batch()
    model(x, t, generator=torch.Generator().manual_seed(0))
    mu, log_sigma = model.ae.encode(model.chunks(t))                      # (3, L-1, 8)
    y = seen['y']                                                         # (400, 3, L-1, 8)
    assert y.shape == (400, *mu.shape)
    torch.testing.assert_close(y.mean(0), mu, atol=4 * float(log_sigma.exp().max()) / 20, rtol=0)
    ratio = y.std(0) / log_sigma.exp()
    assert ratio.min() > 0.88 and ratio.max() < 1.12


def test_sample_latent_moments():
    mu, log_sigma = torch.tensor([1.0, -2.0]), torch.tensor([0.0, -1.5])
    z = Autoencoder.sample_latent(mu, log_sigma, 20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu, atol=0.03, rtol=0)          # 20000 draws: se <= 0.007
    torch.testing.assert_close(z.std(0), log_sigma.exp(), atol=0, rtol=0.03)


def test_aux_ce_off_is_the_papers_loss_and_adds_no_parameters():
    x, t = batch()
    plain, off = make(), make(aux_ce=0.0)
    assert plain.state_dict().keys() == off.state_dict().keys() and off.aux_head is None
    _, a = plain(x, t, generator=torch.Generator().manual_seed(3))
    _, b = off(x, t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # and that loss is the energy loss of the head's samples against the posterior draws, nothing else
    g = torch.Generator().manual_seed(3)
    h = plain.hidden(plain.chunks(x))
    y, _ = plain.target_latents(plain.chunks(t), g)
    torch.testing.assert_close(a, energy_loss(plain.head(h, 8, g), y).mean())


def test_aux_ce_loss_and_gradients():
    """On: loss = energy + w * CE(aux_head(h), next chunk's tokens); its gradient reaches the backbone and
    the aux head, never the frozen AE; the energy head's gradient is the energy loss's alone."""
    x, t = batch()
    w = 0.7
    model = make(aux_ce=w)
    out, loss = model(x, t, generator=torch.Generator().manual_seed(3))
    h = out['hidden']
    logits = model.aux_head(h).view(3, L - 1, K, V)
    ce = F.cross_entropy(logits.flatten(0, -2), model.chunks(t).flatten())
    torch.testing.assert_close(out['aux_ce'], ce.detach())
    torch.testing.assert_close(loss, out['energy'] + w * ce)
    loss.backward()
    assert model.aux_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.ae.parameters())
    head_grad = model.head.final_out.weight.grad.clone()
    model.zero_grad()
    out2, _ = model(x, t, generator=torch.Generator().manual_seed(3))
    out2['energy'].requires_grad_(False)
    ce_only = F.cross_entropy(model.aux_head(out2['hidden']).view(3, L - 1, K, V).flatten(0, -2),
                              model.chunks(t).flatten())
    ce_only.backward()
    assert model.head.final_out.weight.grad is None or model.head.final_out.weight.grad.abs().sum() == 0
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert head_grad.abs().sum() > 0
