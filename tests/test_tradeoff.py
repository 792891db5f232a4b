"""experiments/tradeoff.py: its accuracy and collision rates against hand-counted answers, and the
sampler settings it asks each model for."""
import dataclasses
import json
import sys

import pytest
import torch

import train
from calm_min.config import ConfigError
from conftest import ROOT

sys.path.insert(0, str(ROOT))
import experiments.tradeoff as tradeoff  # noqa: E402
from experiments.tradeoff import CALM_SETTINGS, GPT_SETTINGS, Config, main, rows, scores  # noqa: E402


def test_scores_known_answer():
    """Four positions. First token: a matches y at 3, a matches b at 3. Whole chunk: a = y at 2 (one
    miss in the middle of a chunk counts), a = b at 2."""
    y = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8], [5, 6, 7, 8]])
    a = torch.tensor([[1, 2, 3, 4], [1, 9, 3, 4], [5, 6, 7, 8], [0, 6, 7, 8]])
    b = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [0, 6, 7, 8], [0, 6, 7, 8]])
    assert scores(a, b, y) == {'acc_1': 0.75, 'collision_1': 0.75, 'acc_4': 0.5, 'collision_4': 0.5}


class _Recorder:
    """A model whose `continuations` returns fixed samples (2, B, P, 4) and records each sampler."""

    def __init__(self, samples, target):
        self.samples, self.target, self.seen = samples, target, []

    def continuations(self, blocks, sampler, generator=None):
        self.seen.append((sampler.temperature, sampler.num_candidates))
        return {'samples': self.samples, 'target': self.target}


def test_rows_pair_the_two_draws_per_position_and_pass_each_setting():
    """Two blocks of two positions: the two draws of a position are compared with each other and with
    that position's target, never with another position's; each (T, N) reaches the model."""
    target = torch.tensor([[[1, 1, 1, 1], [2, 2, 2, 2]], [[3, 3, 3, 3], [4, 4, 4, 4]]])   # (B=2, P=2, 4)
    first = target.clone()                                          # draw 1: always right
    second = target.flip(1)                                         # draw 2: the other position's chunk
    model = _Recorder(torch.stack([first, second]), target)
    out = rows('calm', model, torch.zeros(2, 8), None, CALM_SETTINGS)
    assert [(r['T'], r['N']) for r in out] == [(round(T, 4), N) for T, N in CALM_SETTINGS]
    assert model.seen == [(T, N) for T, N in CALM_SETTINGS]
    for r in out:
        assert (r['acc_1'], r['collision_1'], r['acc_4'], r['collision_4']) == (1.0, 0.0, 1.0, 0.0)


def test_end_to_end_on_test_checkpoints(train_cfg, tmp_path):
    """The script on a tiny CALM and baseline: every setting's row, rates in [0, 1], a whole chunk never
    matching more often than its first token, and the checkpoints recorded."""
    train.main(dataclasses.replace(train_cfg, model='gpt'))
    train.main(dataclasses.replace(train_cfg, model='calm'))
    cfg = Config(calm=f'{train_cfg.out_dir}/calm.pt', gpt=f'{train_cfg.out_dir}/gpt.pt', context=32, max_blocks=2,
                 out_dir=str(tmp_path / 'tradeoff'), device='cpu')
    main(cfg)
    report = json.loads((tmp_path / 'tradeoff' / 'results.json').read_text())
    assert report['checkpoints']['calm'] == cfg.calm and report['checkpoints']['gpt_step'] == train_cfg.max_iters
    rows_ = report['rows']
    assert len(rows_) == len(CALM_SETTINGS) + len(GPT_SETTINGS)
    for r in rows_:
        assert all(0 <= r[k] <= 1 for k in ('acc_1', 'collision_1', 'acc_4', 'collision_4'))
        assert r['acc_4'] <= r['acc_1'] and r['collision_4'] <= r['collision_1']


def test_checkpoints_of_two_tokenizers_are_refused(monkeypatch, tmp_path):
    fake = {'calm': {'tokenizer': {'kind': 'bytes', 'vocab_size': 257}},
            'gpt': {'tokenizer': {'kind': 'bpe', 'vocab_size': 1024, 'sha256': '0'}}}
    monkeypatch.setattr(tradeoff, 'load_model', lambda path, kinds, device: (None, fake[kinds[0]]))
    with pytest.raises(ConfigError, match='different tokenizers'):
        tradeoff.main(Config(out_dir=str(tmp_path / 'out'), device='cpu'))
    assert not (tmp_path / 'out').exists()
