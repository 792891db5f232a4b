"""experiments/compute_matched.py: its table and plot over runs of several studies (--also), and its
flag checks. The training runs themselves are what the README's table reports; here fake results."""
import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    with pytest.raises(ConfigError, match='twice'):
        cm.Config(sizes='2x128,2x128', budgets='1e13,1e13').validate()
    cm.Config(sizes='2x128,2x128', budgets='1e13,2e13').validate()   # one size at two budgets is fine
    with pytest.raises(ConfigError, match='empty'):
        cm.Config(sizes='', budgets='').validate()
    cm.Config(sizes='', budgets='', also=str(ROOT / 'docs' / 'compute_matched.json')).validate()   # table and plot only


def test_baseline_equivalent_by_hand():
    """Log-linear interpolation on the baseline's frontier, which is a running maximum."""
    runs = [run('gpt', 0, '2x64', 1e13, 10.0), run('gpt', 0, '2x64', 2e13, 8.0),   # worse with more FLOPs:
            run('gpt', 0, '2x128', 4e13, 20.0)]                                    # the frontier stays at 10
    frontier = cm.baseline_frontier(runs)
    assert frontier == [(1e13, 10.0), (2e13, 10.0), (4e13, 20.0)]
    one_budget = [dict(run('gpt', 0, '2x64', 0.99e13, 9.0), budget=1e13),
                  dict(run('gpt', 0, '2x128', 1e13, 10.0), budget=1e13)]
    assert cm.baseline_frontier(one_budget) == [(1e13, 10.0)]     # one point: the best, at the largest FLOPs
    rel, f = cm.baseline_equivalent(frontier, 15.0)
    assert rel == '=' and f == pytest.approx(2e13 * 2 ** 0.5)                      # halfway from 2e13 to 4e13 in log
    assert cm.baseline_equivalent(frontier, 9.0) == ('<=', 1e13)
    assert cm.baseline_equivalent(frontier, 10.0) == ('<=', 1e13)
    assert cm.baseline_equivalent(frontier, 20.5) == ('>', None)
    text = cm.equivalence(runs + [run('calm', 4, '4x256', 3.6e14, 15.0)])
    assert '| CALM K=4 2x128 | 15.00 ± 0.50 | 3.60e+14 | 2.8e+13' in text and '| 13x |' in text


@given(st.lists(st.tuples(st.integers(120, 150), st.floats(0, 40)), min_size=1, max_size=8),   # FLOPs 10^(e/10)
       st.floats(0, 40), st.floats(0, 40))
@settings(max_examples=200, deadline=None)
def test_baseline_equivalent_is_monotone_and_reaches_the_score(points, s1, s2):
    """A higher score never needs fewer baseline FLOPs, and where the answer is interpolated the
    frontier interpolated at those FLOPs gives back the score."""
    runs = [run('gpt', 0, '2x128', 10 ** (e / 10), b) for e, b in points]
    frontier = cm.baseline_frontier(runs)
    assert all(b0 <= b1 and f0 < f1 for (f0, b0), (f1, b1) in zip(frontier, frontier[1:]))
    lo, hi = sorted([s1, s2])
    (r_lo, f_lo), (r_hi, f_hi) = cm.baseline_equivalent(frontier, lo), cm.baseline_equivalent(frontier, hi)
    if f_hi is not None:
        assert f_lo is not None and f_lo <= f_hi * (1 + 1e-9)
    if r_hi == '=':
        i = next(i for i, (_, b) in enumerate(frontier) if b >= hi)
        (f0, b0), (f1, b1) = frontier[i - 1], frontier[i]
        assert f0 * (1 - 1e-9) <= f_hi <= f1 * (1 + 1e-9)
        t = (math.log(f_hi) - math.log(f0)) / (math.log(f1) - math.log(f0))
        assert b0 + t * (b1 - b0) == pytest.approx(hi, abs=1e-6)


def test_plan_names_a_recurring_size_by_budget(tmp_path):
    """A size given at two budgets gets two run directories; only CALM runs point at the autoencoder;
    each size's heads are its width / 64."""
    from calm_min.config import TrainConfig, parse_args
    cfg = cm.Config(sizes='2x64,2x64,2x128', budgets='1e12,2e12,2e12', out_dir=str(tmp_path))
    runs = cm.plan(cfg, parse_args([str(ROOT / 'config' / 'tiny_bytes.py')], TrainConfig), tmp_path / 'ae' / 'ae.pt')
    assert [r['name'] for r in runs] == ['gpt_2x64_1e12', 'calm_2x64_1e12', 'gpt_2x64_2e12', 'calm_2x64_2e12',
                                         'gpt_2x128', 'calm_2x128']
    assert [any(f.startswith('--ae_ckpt=') for f in r['flags']) for r in runs] == [False, True] * 3
    assert [[f for f in r['flags'] if f.startswith('--n_head=')] for r in runs] == [['--n_head=1']] * 4 + [['--n_head=2']] * 2
    assert runs[2]['steps'] == pytest.approx(2 * runs[0]['steps'], abs=1)
    for r in runs:        # steps buy the budget, to the rounding of one step
        assert abs(r['tokens'] * r['train_flops_per_token'] - r['budget']) <= 0.5 * r['tokens'] / r['steps'] * r['train_flops_per_token']


def test_plan_counts_parameters_without_the_frozen_autoencoder_and_its_flops_per_token(tmp_path, train_cfg):
    """A CALM run's 'params' are the trained ones (the autoencoder is frozen); the autoencoder stage's
    FLOPs are its per-token training FLOPs times the tokens it read (chunks x K)."""
    import dataclasses
    import train
    from calm_min.checkpoint import load_checkpoint
    from calm_min.config import TrainConfig, parse_args
    tcfg = parse_args([str(ROOT / 'config' / 'tiny_bytes.py')], TrainConfig)
    runs = cm.plan(cm.Config(sizes='2x64', budgets='1e12', out_dir=str(tmp_path)), tcfg, tmp_path / 'ae.pt')
    ae = train.build_model(dataclasses.replace(tcfg, model='ae'), 257, 256)
    calm = train.build_model(dataclasses.replace(tcfg, model='calm', n_layer=2, n_embd=64, n_head=1), 257, 256, ae)
    assert runs[1]['model'] == 'calm' and runs[1]['params'] == sum(p.numel() for p in calm.parameters() if p.requires_grad)
    res = train.main(dataclasses.replace(train_cfg, model='ae'))
    ck = load_checkpoint(res['ckpt'])
    tokens = ck['step'] * train_cfg.ae_batch_size * train_cfg.chunk_size
    trained_ae = train.build_model(dataclasses.replace(train_cfg, model='ae'), 257, 256)
    assert cm.ae_train_flops(res['ckpt']) == trained_ae.flops_per_token()['training'] * tokens


def test_main_charges_every_calm_run_the_autoencoder_stage(tmp_path, monkeypatch):
    """main's bookkeeping, with training and evaluation replaced by their results: a CALM run's training
    FLOPs are its language-model stage's plus the autoencoder stage's; the baseline's are its own."""
    ran = []
    monkeypatch.setattr(cm, 'run', lambda cmd, log: ran.append(cmd))
    monkeypatch.setattr(cm, 'finished', lambda path: True)                 # every run already trained
    monkeypatch.setattr(cm, 'ae_train_flops', lambda path: 5e11)
    monkeypatch.setattr(cm, 'load_checkpoint', lambda path, *a: {'train_flops': 1e12 if path.name == 'calm.pt' else 2e12})
    monkeypatch.setattr(cm, 'plot', lambda runs, path: None)
    for name in ('gpt_2x64', 'calm_2x64'):
        (tmp_path / name).mkdir()
        for split in ('val', 'test'):
            (tmp_path / name / f'eval_{split}.json').write_text(json.dumps({'results': {'brierlm': 3.0, 'brierlm_se': 0.1}}))
    cfg = cm.Config(preset=str(ROOT / 'config' / 'tiny_bytes.py'), sizes='2x64', budgets='1e12', out_dir=str(tmp_path),
                    plot=str(tmp_path / 'p.png'))
    gpt, calm = cm.main(cfg)
    assert ran == []                                                      # nothing left to train or evaluate
    assert (gpt['train_flops'], gpt['ae_flops']) == (2e12, 0.0)
    assert (calm['train_flops'], calm['ae_flops']) == (1e12 + 5e11, 5e11)
    assert [r['train_flops'] for r in json.loads((tmp_path / 'results.json').read_text())] == [2e12, 1.5e12]
