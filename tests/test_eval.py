"""eval.py's figures by their definitions, on tiny untrained models: the baseline's cross-entropy is its
training loss on the same text, CALM's three context variants are the hidden states they name, and the
autoencoder's reconstruction figures count what they say they count."""
import math

import torch

import eval as evaluate
from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.backbone import BackboneConfig
from calm_min.config import EvalConfig
from calm_min.gpt import GPT, GPTConfig
from test_calm import tiny_calm


def test_cross_entropy_is_the_models_next_token_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=32))).eval()
    blocks = torch.randint(40, (5, 24), generator=torch.Generator().manual_seed(1))
    out = evaluate.eval_lm(model, blocks, EvalConfig(batch_size=2, bootstrap=10), bytes_per_token=1.5)
    with torch.no_grad():
        loss = model(blocks[:, :-1], blocks[:, 1:])[1]                        # mean over 5 x 23 tokens
    assert out['ce_tokens'] == 5 * 23
    assert math.isclose(out['cross_entropy'], loss.item(), rel_tol=1e-5)
    assert math.isclose(out['bits_per_byte'], loss.item() / math.log(2) / 1.5, rel_tol=1e-5)


def test_calm_context_variants_are_the_hidden_states_they_name(monkeypatch):
    """full_context: h_i from chunks 0..i; last_chunk_only: from chunk i alone; other_context: the
    previous block's h_i; each scored against the targets of chunk i + 1 of its own block."""
    model = tiny_calm()
    blocks = torch.randint(40, (3, 24), generator=torch.Generator().manual_seed(1))   # 6 chunks per block
    seen, targets = [], []
    energy, target_latents = model.energy, model.target_latents
    monkeypatch.setattr(model, 'energy', lambda h, y, g: seen.append((h, y)) or energy(h, y, g))
    monkeypatch.setattr(model, 'target_latents', lambda c, g: targets.append(c) or target_latents(c, g))
    out = evaluate.eval_context(model, blocks, EvalConfig(batch_size=3))
    assert out['energy_loss_positions'] == 3 * 5 and len(seen) == 3
    (full, y0), (last, y1), (other, y2) = seen
    x = model.chunks(blocks)                                                  # (3, 6, 4)
    assert len(targets) == 1 and torch.equal(targets[0], x[:, 1:])            # chunk i + 1 for position i
    assert y0 is y1 is y2
    with torch.no_grad():
        torch.testing.assert_close(full, model.hidden(x)[:, :-1])
        for i in range(5):
            torch.testing.assert_close(last[:, i], model.hidden(x[:, i:i + 1])[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other, full.roll(1, 0))


def test_autoencoder_figures_count_tokens_chunks_and_kl_per_dimension(monkeypatch):
    torch.manual_seed(0)
    ae = Autoencoder(AEConfig(vocab_size=37, chunk_size=4, latent_size=8, dim=32, hidden=64)).eval()
    chunks = torch.randint(37, (100, 4), generator=torch.Generator().manual_seed(1))
    wrong = chunks.clone()
    wrong[:30, 0] = (wrong[:30, 0] + 1) % 37                                 # 30 chunks with one wrong token
    wrong[:10, 1] = (wrong[:10, 1] + 1) % 37                                 # 10 of them with two
    zs = []
    monkeypatch.setattr(ae, 'decode', lambda z: zs.append(z) or wrong)
    out = evaluate.eval_ae(ae, chunks, EvalConfig())
    assert out['chunks'] == 100
    assert out['token_accuracy_mu'] == (400 - 40) / 400 and out['chunk_exact_mu'] == 0.7
    with torch.no_grad():
        kl = ae.kl_terms(*ae.encode(chunks))[0].mean(0)                     # (8,) mean over chunks
    assert torch.allclose(torch.tensor(out['kl_per_dim'], dtype=torch.float64), kl.double(), atol=1e-4)  # rounded to 4 places
    assert math.isclose(out['kl_total'], float(kl.sum()), rel_tol=1e-4)
    assert out['collapsed_dims'] == int((kl < 0.01).sum())
    # what each figure decodes: z = mu; one posterior draw; mu plus noise of each level's std
    with torch.no_grad():
        mu, log_sigma = ae.encode(chunks)
    assert len(zs) == 2 + len(evaluate.NOISE_LEVELS) and torch.equal(zs[0], mu)
    eps = (zs[1] - mu) / log_sigma.exp()                                     # 800 standard normals
    assert abs(eps.mean()) < 0.2 and 0.85 < eps.std() < 1.15                 # 5.7 and 6 standard errors
    for s, z in zip(evaluate.NOISE_LEVELS, zs[2:]):                          # 6 standard errors: each check's
        assert 0.85 * s < (z - mu).std() < 1.15 * s                          # false-alarm rate < 1e-8


def test_other_context_averages_over_the_batches_that_have_one(monkeypatch):
    """3 blocks in batches of 2: the last batch holds one block, which has no other block to borrow
    states from; the other-context loss is the mean over the first batch's positions only."""
    model = tiny_calm()
    blocks = torch.randint(40, (3, 24), generator=torch.Generator().manual_seed(1))   # 6 chunks per block
    losses = []
    energy = model.energy

    def spy(h, y, g):
        out = energy(h, y, g)
        losses.append(out[0])
        return out
    monkeypatch.setattr(model, 'energy', spy)
    out = evaluate.eval_context(model, blocks, EvalConfig(batch_size=2))
    assert len(losses) == 3 + 2                                       # full, last, other; full, last
    assert out['energy_loss_positions'] == 3 * 5
    assert math.isclose(out['energy_loss_full_context'], (losses[0].sum() + losses[3].sum()).item() / 15, rel_tol=1e-5)
    assert math.isclose(out['energy_loss_other_context'], losses[2].sum().item() / 10, rel_tol=1e-5)
