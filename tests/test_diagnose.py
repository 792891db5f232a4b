"""experiments/diagnose_calm.py: each measurement against a case whose answer is known."""
import dataclasses
import math
import sys

import pytest
import torch

import train
from calm_min.autoencoder import Autoencoder
from calm_min.calm import CALM
from calm_min.checkpoint import load_model
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from experiments import diagnose_calm as dc  # noqa: E402
from experiments.diagnose_calm import (brier1_of_probs, chunk_keys, energy_terms, group_spread, hidden_and_chunks,  # noqa: E402
                                       in_set_rate, nearest_distance, train_probe)
from calm_min.energy_head import energy_loss  # noqa: E402


def test_group_spread_known_answer():
    """Noise-free points: group 0 holds two points 3 apart, group 1 four points on a unit square;
    a group of one position is skipped. Pairs are weighted by their number: 2 in group 0, 12 in group 1."""
    sq = torch.tensor([[0., 0], [1, 0], [0, 1], [1, 1]])
    y = torch.cat([torch.tensor([[0., 0], [3, 0]]), sq + 10, torch.tensor([[50., 50]])])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 7])
    within_sq = (8 * 1 + 4 * math.sqrt(2)) / 12                          # mean over the 12 ordered pairs
    expected = (2 * 3 + 12 * within_sq) / 14
    got = group_spread(y, y, groups, max_pairs=200_000, generator=torch.Generator().manual_seed(0))
    assert got == pytest.approx(expected, rel=0.01)                      # 200k pairs: error ~0.1%
    assert math.isnan(group_spread(y, y, torch.arange(7)))               # no group of two


def test_energy_terms_match_the_loss():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 50, 6, generator=g), torch.randn(20, 50, 6, generator=g)
    t = energy_terms(x, y)
    assert t['energy_loss'] == pytest.approx(float(energy_loss(x, y).mean()), rel=1e-5)
    assert t['energy_loss'] == pytest.approx(2 * t['fidelity'] - t['diversity'], rel=1e-6)


def test_nearest_distance_in_set_rate_and_keys():
    bank = torch.tensor([[0., 0], [10, 0]])
    assert nearest_distance(torch.tensor([[1., 0], [7, 0], [10, 2]]), bank, batch=2).tolist() == [1, 3, 2]
    known = {(1, 2), (3, 4)}
    assert in_set_rate(torch.tensor([[1, 2], [2, 1], [3, 4], [0, 0]]), known) == 0.5
    keys = chunk_keys(torch.tensor([[1, 2], [2, 1], [1, 2]]), vocab_size=5)
    assert keys.tolist() == [7, 11, 7]


def test_probe_learns_a_separable_map_and_brier_is_exact():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (600,), generator=g)
    feats = torch.nn.functional.one_hot(labels, 3).float() * 4 + 0.1 * torch.randn(600, 3, generator=g)
    probe = train_probe(feats, labels, 3, steps=200, lr=0.1)
    rep = brier1_of_probs(torch.softmax(probe(feats), -1).detach(), labels)
    assert rep['accuracy'] == 1.0 and rep['brier1'] > 0.9
    uniform = brier1_of_probs(torch.full((4, 3), 1 / 3), torch.tensor([0, 1, 2, 0]))
    assert uniform['brier1'] == pytest.approx(2 / 3 - 1 / 3)            # 2 p(y) - sum p^2


def test_hidden_states_pair_with_the_chunk_after_them(train_cfg):
    """hidden_and_chunks: the state at chunk position i has read chunks 0..i (prev = chunk i) and is
    paired with chunk i + 1 (nxt), the one it predicts; flattened block by block."""
    torch.manual_seed(0)
    model = CALM(train_cfg.calm_config(), Autoencoder(train_cfg.ae_config(257, mask_id=256))).eval()
    K = model.chunk_size
    blocks = torch.randint(256, (3, 5 * K))
    h, prev, nxt = hidden_and_chunks(model, blocks, batch=2)
    x = blocks.view(3, 5, K)
    assert torch.equal(prev, x[:, :-1].flatten(0, 1)) and torch.equal(nxt, x[:, 1:].flatten(0, 1))
    with torch.no_grad():
        for b in range(3):
            for i in range(4):                                # the state of the prefix that ends with chunk i
                alone = model.hidden(x[b:b + 1, :i + 1])[0, -1].float()
                torch.testing.assert_close(h[b * 4 + i], alone, atol=1e-5, rtol=1e-4)


def test_report_measures_what_it_names(train_cfg, monkeypatch):
    """main on a tiny trained CALM, with spies on its measurements: the other-context head reads
    another block's states; the probe and the unigram learn from training positions only and are
    scored on validation; each headroom group is keyed as it is named; two posterior draws of the
    same chunk differ."""
    train.main(dataclasses.replace(train_cfg, model='calm'))
    calls = {}

    def spy(name):
        real = getattr(dc, name)

        def wrapper(*a, **k):
            out = real(*a, **k)
            calls.setdefault(name, []).append((a, out))
            return out
        monkeypatch.setattr(dc, name, wrapper)
    for name in ('head_report', 'train_probe', 'group_spread', 'hidden_and_chunks', 'brier1_of_probs'):
        spy(name)
    ckpt = f'{train_cfg.out_dir}/calm.pt'
    rep = dc.main(dc.Config(ckpt=ckpt, val_blocks=3, train_blocks=5, probe_steps=3, device='cpu'))
    (_, (h_val, prev_val, nxt_val)), (_, (h_tr, _, nxt_tr)) = calls['hidden_and_chunks']
    assert len(h_val) < len(h_tr)
    # the head, with its own context and with the previous block's
    (own, _), (other, _) = calls['head_report']
    L1 = rep['context_tokens'] // rep['chunk_size'] - 1
    assert torch.equal(own[1], h_val) and torch.equal(own[2], nxt_val)
    assert torch.equal(other[1], h_val.view(-1, L1, h_val.shape[-1]).roll(1, 0).flatten(0, 1))
    assert not torch.equal(other[1], h_val)
    # the probe and the unigram: fitted on training positions, scored on validation ones
    (feats, labels, *_), _ = calls['train_probe'][0]
    assert torch.equal(feats, h_tr.cpu()) and torch.equal(labels, nxt_tr[:, 0].cpu())
    assert rep['linear_probe_first_token']['train_positions'] == len(h_tr)
    (probe_probs, probe_labels), _ = calls['brier1_of_probs'][0]
    (uni_probs, uni_labels), _ = calls['brier1_of_probs'][1]
    assert torch.equal(probe_labels, nxt_val[:, 0].cpu()) and torch.equal(uni_labels, nxt_val[:, 0].cpu())
    counts = torch.bincount(nxt_tr[:, 0].cpu(), minlength=uni_probs.shape[-1]).double()
    torch.testing.assert_close(uni_probs[0], counts / counts.sum())
    # the headroom: one group, then by the first token, the previous chunk, each later token
    V, K = load_model(ckpt)[0].tok_emb.num_embeddings, rep['chunk_size']
    groups = [a[2] for a, _ in calls['group_spread']]
    assert len(groups) == 3 + K - 1 and (groups[0] == 0).all()
    assert torch.equal(groups[1], nxt_val[:, 0].cpu())
    assert torch.equal(groups[2], dc.chunk_keys(prev_val.cpu(), V))
    assert all(torch.equal(groups[2 + k], nxt_val[:, k].cpu()) for k in range(1, K))
    assert rep['headroom_E_dist']['same_chunk_posterior_noise'] > 0
