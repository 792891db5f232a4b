"""experiments/compute_matched.py: its table and plot over runs of several studies (--also), and its
flag checks. The training runs themselves are what the README's table reports; here fake results."""
import sys

import pytest

from calm_min.config import ConfigError
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from experiments import compute_matched as cm  # noqa: E402


def run(model, k, size, flops, brier):
    r = {'name': f'{model}_{size}', 'model': model, 'n_layer': 2, 'n_embd': 128, 'params': 1e6, 'steps': 10,
         'tokens': 4e4, 'train_flops': flops, 'inference_flops_per_token': 1e6, 'ae_flops': 1e13 * k if k else 0.0,
         'val_brierlm': brier, 'val_brierlm_se': 0.5, 'test_brierlm': brier / 2, 'test_brierlm_se': 0.4}
    if k:
        r['chunk_size'] = k
    return r


def three_studies():
    """A baseline, a CALM run saved before 'chunk_size' existed (so K = 4), and a K = 2 run."""
    legacy = run('calm', 0, '2x128', 8e13, 9.5)
    legacy['ae_flops'] = 2.19e13
    return [run('gpt', 0, '2x128', 6e13, 24.4), legacy, run('calm', 2, '2x128', 7e13, 9.2)]


def test_table_tells_the_chunk_sizes_apart():
    """Each K gets its own rows and its own autoencoder cost in the footnote."""
    runs = three_studies()
    assert [cm.label(r) for r in runs] == ['baseline', 'CALM K=4', 'CALM K=2']
    text = cm.table(runs)
    assert '| baseline | 2x128' in text and '| CALM K=4 | 2x128' in text and '| CALM K=2 | 2x128' in text
    assert 'CALM K=2 2.00e+13' in text and 'CALM K=4 2.19e+13' in text
    assert 'autoencoder' not in cm.table(runs[:1])                   # a baseline-only study: no CALM footnote


def test_plot_draws_every_study(tmp_path):
    pytest.importorskip('matplotlib')
    cm.plot(three_studies(), tmp_path / 'p.png')
    assert (tmp_path / 'p.png').stat().st_size > 1000


def test_flags_are_checked(tmp_path):
    with pytest.raises(ConfigError, match='--also'):
        cm.Config(also=str(tmp_path / 'missing.json')).validate()
    with pytest.raises(ConfigError, match='sizes'):
        cm.Config(sizes='2x128', budgets='1e13,2e13').validate()
