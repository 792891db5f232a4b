"""The figures of experiments/learning_curves.py and experiments/brier_vs_ce.py from made-up runs whose
answers are known (no training)."""
import json
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from experiments import brier_vs_ce, learning_curves  # noqa: E402


def test_learning_curve_time_axis(tmp_path):
    """A CALM run of 20 steps of 4 x 2 x 28 text tokens (block 30 cut to whole chunks of 4), most logged
    at 1000 tokens/s and two slowed to 500: a step takes 224 / 1000 s (the idle-machine speed, the
    90th percentile), and each BrierLM point sits at its step's time."""
    run = tmp_path / 'run'
    run.mkdir()
    tps = [1000.0] * 18 + [500.0] * 2
    recs = [{'kind': 'eval', 'iter': 0, 'val_brierlm': 0.5}]
    recs += [{'kind': 'train', 'iter': i + 1, 'tok_per_s': t} for i, t in enumerate(tps)]
    recs.insert(11, {'kind': 'eval', 'iter': 10, 'val_brierlm': 2.0})
    recs.append({'kind': 'eval', 'iter': 20, 'val_brierlm': 3.0})
    (run / 'calm.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in recs))
    torch.save({'train_config': {'batch_size': 4, 'grad_accum': 2, 'block_size': 30}, 'ae_config': {'chunk_size': 4}},
               run / 'calm.pt')
    c = learning_curves.curve(run)
    assert c['kind'] == 'calm' and c['steps'] == 20 and c['final'] is None
    assert c['sec_per_step'] == pytest.approx(4 * 2 * 28 / 1000)
    assert c['points'] == pytest.approx([(0.0, 0.5), (10 * 0.224, 2.0), (20 * 0.224, 3.0)])


def test_spearman_is_the_rank_correlation(tmp_path, monkeypatch):
    """Four checkpoints whose BrierLM falls as cross-entropy rises, but not on a line: Spearman -1,
    Pearson above it; eval.py's figures stand in for scoring (no training)."""
    assert brier_vs_ce.ranks([2.0, 0.5, 3.0, 1.0]) == [2, 0, 3, 1]
    assert brier_vs_ce.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1)
    assert brier_vs_ce.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert brier_vs_ce.pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    ce = {'small/gpt_1.pt': 1.0, 'small/gpt_2.pt': 2.0, 'medium/gpt_1.pt': 3.0, 'medium/gpt_2.pt': 4.0}
    lm = {'small/gpt_1.pt': 10.0, 'small/gpt_2.pt': 5.0, 'medium/gpt_1.pt': 4.9, 'medium/gpt_2.pt': 0.0}
    for name in ce:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b'')

    def fake_eval(ec):
        key = str(ec.ckpt).removeprefix(str(tmp_path) + '/')
        return {'results': {'cross_entropy': ce[key], 'brierlm': lm[key], 'brierlm_se': 0.1,
                            **{f'brier{n}': 0.0 for n in range(1, 5)}}}
    monkeypatch.setattr(brier_vs_ce.evaluate, 'main', fake_eval)
    monkeypatch.setattr(brier_vs_ce, 'pyplot', lambda: None)
    s = brier_vs_ce.main(brier_vs_ce.Config(out_dir=str(tmp_path), train=False))
    assert s['checkpoints'] == 4
    assert s['spearman'] == pytest.approx(-1)
    assert -1 < s['pearson'] < -0.9
    assert json.loads((tmp_path / 'results.json').read_text())['spearman'] == pytest.approx(-1)
