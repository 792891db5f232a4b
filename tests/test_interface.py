"""The one interface every language model of calm-min has, which train.py, eval.py, bench.py, BrierLM
and the experiments rely on instead of asking which model they hold; and the `Sampler` settings."""
import math

import pytest
import torch

from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.backbone import BackboneConfig
from calm_min.brierlm import evaluate_brier
from calm_min.calm import CALM, CALMConfig
from calm_min.gpt import GPT, GPTConfig
from calm_min.sampling import Sampler

V = 30
BB = BackboneConfig(n_layer=2, n_head=2, n_embd=64)


def gpt():
    return GPT(GPTConfig(vocab_size=V, backbone=BB))


def calm(K=4):
    ae = Autoencoder(AEConfig(vocab_size=V, chunk_size=K, latent_size=8, dim=32, hidden=64))
    return CALM(CALMConfig(backbone=BB, head_blocks=1, noise_size=8, n_targets=10), ae)


@pytest.mark.parametrize('make', [gpt, calm, lambda: calm(K=2)], ids=['gpt', 'calm_k4', 'calm_k2'])
def test_every_model_has_the_same_contract(make):
    model = make()
    g = torch.Generator().manual_seed(0)
    s, window = model.tokens_per_step, model.train_window(32)
    w = torch.randint(V, (3, window), generator=g)
    out, loss = model(w[:, :-s], w[:, s:], generator=g)                   # training: (output, scalar loss)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    _, no_loss = model(w[:, :-s], generator=g)                             # no targets: no loss
    assert no_loss is None
    prompt = torch.randint(V, (2, 5), generator=g)
    model.eval()
    for sampler in (Sampler(), Sampler(temperature=0.5, num_candidates=4)):
        gen = model.generate(prompt, 9, sampler, generator=g)
        assert gen.shape == (2, 14) and torch.equal(gen[:, :5], prompt)
    cont = model.continuations(w[:, :32], generator=g)
    a, b = cont['samples']
    assert a.shape == b.shape == cont['target'].shape and a.shape[-1] == 4 and a.shape[0] == 3
    r = evaluate_brier(model, w[:, :32], batch_size=2, n_boot=10)
    assert 0 <= r['brierlm'] <= 100 and r['positions'] == 3 * a.shape[1]


@pytest.mark.parametrize('kw,match', [
    (dict(temperature=0.0), 'finite number > 0'), (dict(temperature=-1.0), 'finite number > 0'),
    (dict(temperature=math.nan), 'finite number > 0'), (dict(temperature=math.inf), 'finite number > 0'),
    (dict(temperature=1e-320), 'too small'), (dict(top_k=-1), 'top_k'), (dict(method='greedy'), "'batch'"),
    (dict(num_candidates=0), 'num_candidates'), (dict(max_draws=0), 'max_draws')])
def test_sampler_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**kw)


def test_calm_sampler_limits_are_checked_where_sampling_starts():
    model = calm().eval()
    prompt = torch.randint(V, (1, 4))
    with pytest.raises(ValueError, match=r'\(0, 1\]'):
        model.generate(prompt, 4, Sampler(temperature=1.5))                  # T > 1: no likelihood-free sampler
    with pytest.raises(ValueError, match='T = 1/n'):
        model.generate(prompt, 4, Sampler(temperature=0.7, method='batch'))
    assert gpt().eval().generate(prompt, 3, Sampler(temperature=1.5)).shape == (1, 7)   # softmax: any T > 0
