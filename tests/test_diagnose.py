"""experiments/diagnose_calm.py: each measurement against a case whose answer is known."""
import math
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from experiments.diagnose_calm import (brier1_of_probs, chunk_keys, energy_terms, group_spread,  # noqa: E402
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
