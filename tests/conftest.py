"""Shared fixtures: a small synthetic corpus (no bundled data needed), prepared once per session."""
import json
from pathlib import Path
import random

import pytest
import torch
from hypothesis import settings

# The same examples on every run (CI included): a property test cannot pass once and fail the next time.
settings.register_profile('calm_min', derandomize=True, deadline=None)
settings.load_profile('calm_min')

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the nation union congress people state year law war peace trade public government "
         "great present country power citizens treaty army navy states united policy").split()


def make_docs(n_docs=40, words=300, seed=0):
    rng = random.Random(seed)
    return [' '.join(rng.choice(WORDS) for _ in range(words)).capitalize() + '.' for _ in range(n_docs)]


@pytest.fixture(scope='session')
def corpus_jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp('corpus') / 'docs.jsonl'
    path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in make_docs()))
    return path


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data_cache'))


@pytest.fixture
def train_cfg(corpus_jsonl, data_dir, tmp_path):
    """A TrainConfig from config/test.py on the synthetic corpus, bytes tokenizer, in tmp_path."""
    from calm_min.config import TrainConfig, parse_args
    return parse_args([str(ROOT / 'config' / 'test.py'), f'--dataset={corpus_jsonl}', '--tokenizer=bytes',
                       f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}', '--device=cpu'], TrainConfig)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
