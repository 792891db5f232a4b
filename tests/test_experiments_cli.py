"""Every experiment script answers bad input as train.py, eval.py and sample.py do: one `error: ...`
line on stderr and exit code 1, never a traceback, before any work (README, "Reliability")."""
import importlib
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))

CASES = [   # (module, flags with a missing input, words the message must hold)
    ('tradeoff', ['--calm={tmp}/missing.pt'], 'not found'),
    ('diagnose_calm', ['--ckpt={tmp}/missing.pt'], 'not found'),
    ('diagnose_calm', ['--ckpt={tmp}/missing.pt', '--out={tmp}'], 'is a folder'),      # checked first
    ('brier_vs_ce', ['--train=false', '--out_dir={tmp}'], 'run without --train=false'),
    ('learning_curves', ['--runs={tmp}', '--out={tmp}/plot.png'], 'no calm.jsonl or gpt.jsonl'),
    ('learning_curves', ['--runs={tmp}', '--out={tmp}/plot.txt'], 'must end in .png, .pdf, .svg'),
    ('compute_matched', ['--sizes=', '--budgets=', '--also={tmp}/r.json', '--plot={tmp}/r.json'], 'must end in'),
    ('compute_matched', ['--sizes=', '--budgets=', '--also={tmp}/r.json', '--plot={tmp}/ckpt.png'],
     'exists and is not a .png image'),
    ('compute_matched', ['--sizes=', '--budgets=', '--also={tmp}/missing.json'], 'not a file'),
]


@pytest.mark.parametrize('name,flags,words', CASES, ids=[f'{c[0]}-{i}' for i, c in enumerate(CASES)])
def test_missing_input_gives_one_error_line(name, flags, words, tmp_path, capsys):
    cli = importlib.import_module(f'experiments.{name}').cli
    (tmp_path / 'r.json').write_text('[]')
    (tmp_path / 'ckpt.png').write_bytes(b'PK\x03\x04 a checkpoint given by mistake')
    assert cli([f.format(tmp=tmp_path) for f in flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: ') and words in err[0], err
    assert cli(['--no_such_flag=1']) == 1                     # and an unknown flag, with the valid ones
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'unknown option --no_such_flag' in err[0], err
