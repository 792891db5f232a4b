"""Fault injection: a diverging, interrupted or badly started run never costs good work and ends with
one clear `error:` line (README, "Reliability"). Real subprocesses and signals where signals matter."""
import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import eval as evaluate
import sample
import train
from calm_min.checkpoint import CheckpointError, load_checkpoint
from calm_min.config import ConfigError
from calm_min.data import Corpus, DataError, prepare
from calm_min.gpt import GPT
from conftest import ROOT


def _cmd(train_cfg, *flags):
    return [sys.executable, str(ROOT / 'train.py'), str(ROOT / 'config' / 'test.py'), f'--dataset={train_cfg.dataset}',
            '--tokenizer=bytes', f'--data_dir={train_cfg.data_dir}', f'--out_dir={train_cfg.out_dir}', '--device=cpu',
            *flags]


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f'{path} never appeared'
        time.sleep(0.05)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(train_cfg, monkeypatch):
    """From the 5th training forward on the loss is NaN: the run stops at step 5 naming the step-3
    checkpoint, which stays on disk, finite and unchanged; with --skip_nonfinite=1 one bad step is
    skipped and the run finishes."""
    orig, calls = GPT.forward, [0]

    def poisoned(self, x, targets=None, generator=None):
        logits, loss = orig(self, x, targets, generator)
        if self.training and targets is not None:
            calls[0] += 1
            if calls[0] in bad:
                loss = loss * float('nan')
        return logits, loss
    monkeypatch.setattr(GPT, 'forward', poisoned)
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=6, eval_interval=3)
    bad = set(range(5, 100))
    with pytest.raises(train.TrainingDiverged, match=r'at step 5 .*last good checkpoint is .*gpt.pt \(step 3\)'):
        train.main(cfg)
    ck = load_checkpoint(cfg.ckpt_path)
    assert ck['step'] == 3 and not ck['finished']
    assert all(torch.isfinite(t).all() for t in ck['model'].values())
    calls[0], bad = 0, {5}
    res = train.main(dataclasses.replace(cfg, overwrite=True, skip_nonfinite=1))
    assert len(res['losses']) == 5 and load_checkpoint(cfg.ckpt_path)['finished']


def test_nonfinite_checkpoint_is_refused(train_cfg, tmp_path):
    res = train.main(dataclasses.replace(train_cfg, model='gpt'))
    ck = torch.load(res['ckpt'], weights_only=True)
    next(iter(ck['model'].values()))[0] = float('nan')
    torch.save(ck, tmp_path / 'nan.pt')
    with pytest.raises(CheckpointError, match='NaN or inf'):
        sample.main(sample.SampleConfig(ckpt=str(tmp_path / 'nan.pt'), device='cpu'))


def test_sigterm_saves_the_current_step_and_resumes(train_cfg):
    p = subprocess.Popen(_cmd(train_cfg, '--model=gpt', '--max_iters=100000', '--eval_interval=100000'),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:                                     # wait for a few training steps
        if line.startswith('train iter 3 '):
            break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143 and 'Traceback' not in err, err
    ck = load_checkpoint(train_cfg.ckpt_path.with_name('gpt.pt'))
    assert ck['step'] >= 3 and not ck['finished'] and 'continue it with --resume=true' in out
    step = ck['step']
    r = subprocess.run(_cmd(train_cfg, '--model=gpt', f'--max_iters={step + 2}', '--eval_interval=100000',
                            '--resume=true'), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(train_cfg.ckpt_path.with_name('gpt.pt'))['step'] == step + 2


@pytest.mark.parametrize('resume', ['--resume=false', '--resume=true'])
def test_sigkill_in_the_autoencoder_stage_is_resumed_not_reused(train_cfg, resume):
    """Killed while training its AE, a CALM run leaves an unfinished ae.pt: an explicit --ae_ckpt to it
    is refused, and the next CALM run, plain or with --resume=true (the advice a stopped run prints),
    finishes the AE (resuming it), then trains CALM from the start."""
    ae_path = train_cfg.ckpt_path.with_name('ae.pt')
    p = subprocess.Popen(_cmd(train_cfg, '--model=calm', '--ae_max_iters=100000', '--eval_interval=2'),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(ae_path, p)
    time.sleep(0.3)
    p.kill()
    p.wait()
    ck = load_checkpoint(ae_path)
    assert not ck['finished']
    r = subprocess.run(_cmd(train_cfg, '--model=calm', f'--ae_ckpt={ae_path}', '--out_dir=' + str(train_cfg.out_dir) + '/x'),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'run that stopped at step' in r.stderr and 'Traceback' not in r.stderr
    r = subprocess.run(_cmd(train_cfg, '--model=calm', f'--ae_max_iters={ck["step"] + 2}', resume),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'did not finish: resuming it first' in r.stdout and f'resumed {ae_path} at step {ck["step"]}' in r.stdout
    assert load_checkpoint(ae_path)['finished'] and load_checkpoint(ae_path)['step'] == ck['step'] + 2
    assert load_checkpoint(train_cfg.ckpt_path.with_name('calm.pt'))['step'] == train_cfg.max_iters


def test_resume_cannot_go_backwards(train_cfg):
    train.main(dataclasses.replace(train_cfg, model='gpt', max_iters=6))
    with pytest.raises(ConfigError, match='at step 6, beyond --max_iters=3'):
        train.main(dataclasses.replace(train_cfg, model='gpt', max_iters=3, resume=True))


def test_resume_with_nothing_to_continue_says_so(train_cfg):
    with pytest.raises(ConfigError, match='no .*gpt.pt to continue: check --out_dir'):
        train.main(dataclasses.replace(train_cfg, model='gpt', resume=True))


def test_truncated_prepared_data_is_detected(corpus_jsonl, tmp_path):
    out = prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path), verbose=False)
    good = (out / 'train.bin').read_bytes()
    (out / 'train.bin').write_bytes(good[:len(good) // 8])
    with pytest.raises(DataError, match='truncated'):
        Corpus(out)
    assert prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path), verbose=False) == out   # prepared again
    assert (out / 'train.bin').read_bytes() == good
    data = bytearray(good)
    data[100] ^= 1                                            # same size, other bytes
    (out / 'train.bin').write_bytes(bytes(data))
    prepare(str(corpus_jsonl), 'bytes', 0, str(tmp_path), verbose=False)
    assert (out / 'train.bin').read_bytes() == good


def test_binary_and_non_utf8_corpora_are_refused(tmp_path):
    (tmp_path / 'bin.txt').write_bytes(b'some text\0\1\2 and bytes' * 100)
    with pytest.raises(DataError, match='binary'):
        prepare(str(tmp_path / 'bin.txt'), 'bytes', 0, str(tmp_path / 'c'), verbose=False)
    (tmp_path / 'latin.txt').write_bytes('caf\xe9 au lait. '.encode('latin-1') * 10)
    with pytest.raises(DataError, match=r'not UTF-8 text: invalid byte 0xe9 at byte offset 3'):
        prepare(str(tmp_path / 'latin.txt'), 'bytes', 0, str(tmp_path / 'c'), verbose=False)
    (tmp_path / 'n.jsonl').write_text('{"text": 12}\n')
    with pytest.raises(DataError, match="'text' must be a string"):
        prepare(str(tmp_path / 'n.jsonl'), 'bytes', 0, str(tmp_path / 'c'), verbose=False)
    (tmp_path / 'bad.xz').write_bytes(b'not xz at all')
    with pytest.raises(DataError, match='not a readable .xz'):
        prepare(str(tmp_path / 'bad.xz'), 'bytes', 0, str(tmp_path / 'c'), verbose=False)


def test_a_corpus_shorter_than_a_window_fails_before_any_training(train_cfg):
    with pytest.raises(DataError, match='fewer than one training window'):
        train.main(dataclasses.replace(train_cfg, model='calm', block_size=400000))
    assert not train_cfg.ckpt_path.with_name('ae.pt').exists()               # the AE stage never started


BAD_VALUES = ['nan', 'inf', '-inf', '0', '-1', '1e-300', '1e300', 'abc', '', '-0.5']
TRAIN_KEYS = ['lr', 'ae_lr', 'min_lr_ratio', 'weight_decay', 'grad_clip', 'rope_theta', 'kl_clip', 'kl_beta',
              'beta1', 'beta2', 'batch_size', 'block_size', 'n_layer', 'chunk_size', 'device', 'dtype', 'out_dir',
              'max_iters', 'warmup_iters', 'aux_ce', 'alpha', 'n_samples']
EVAL_KEYS = ['context', 'bootstrap', 'max_blocks', 'batch_size', 'device', 'split', 'out', 'data']
SAMPLE_KEYS = ['temperature', 'top_k', 'num_candidates', 'max_draws', 'max_new_tokens', 'device', 'sampler']


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.sampled_from(['train', 'eval', 'sample']), data=st.data())
def test_fuzzed_flags_give_one_error_line_and_touch_nothing(script, data, train_cfg_fuzz, capsys):
    """Bad numbers and strings for every script: exit 0 or 1, never a traceback (only `error: ...`), and
    after an error nothing under out_dir has changed."""
    out_dir, ckpts = train_cfg_fuzz
    keys = {'train': TRAIN_KEYS, 'eval': EVAL_KEYS, 'sample': SAMPLE_KEYS}[script]
    flags = [f'--{k}={v}' for k, v in data.draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(BAD_VALUES),
                                                               min_size=1, max_size=3)).items()]
    before = {p: p.stat().st_mtime_ns for p in out_dir.rglob('*')}
    cwd = os.getcwd()
    os.chdir(out_dir / 'cwd')                                 # a relative --out_dir=abc lands here, not in the repo
    try:
        rc = run_script(script, flags, ckpts)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert rc in (0, 1) and 'Traceback' not in err
    if rc == 1:
        assert err.strip().startswith('error: ') and len(err.strip().splitlines()) == 1
        if 'non-finite' not in err:                           # a diverged run keeps its log; bad input leaves nothing
            assert {p: p.stat().st_mtime_ns for p in out_dir.rglob('*')} == before


def run_script(script, flags, ckpts) -> int:
    if script == 'train':
        argv = [str(ROOT / 'config' / 'test.py'), *ckpts['train_flags'], '--model=gpt', '--max_iters=2', *flags]
        return train.cli(argv)
    if script == 'eval':
        return evaluate.cli([f'--ckpt={ckpts["gpt"]}', '--max_blocks=2', '--bootstrap=5', *flags])
    return sample.cli([f'--ckpt={ckpts["calm"]}', '--max_new_tokens=4', *flags])


@pytest.fixture(scope='module')
def train_cfg_fuzz(tmp_path_factory, corpus_jsonl, data_dir):
    """A trained GPT and CALM to evaluate and sample from; training runs go to a separate folder."""
    from calm_min.config import TrainConfig, parse_args
    out = tmp_path_factory.mktemp('fuzz')
    (out / 'cwd').mkdir()
    flags = [f'--dataset={corpus_jsonl}', '--tokenizer=bytes', f'--data_dir={data_dir}', '--device=cpu',
             f'--out_dir={out / "runs"}', '--overwrite=true']
    cfg = parse_args([str(ROOT / 'config' / 'test.py'), *flags[:-2], f'--out_dir={out / "ckpt"}'], TrainConfig)
    train.main(dataclasses.replace(cfg, model='gpt'))
    train.main(dataclasses.replace(cfg, model='calm'))
    return out, {'gpt': str(out / 'ckpt' / 'gpt.pt'), 'calm': str(out / 'ckpt' / 'calm.pt'), 'train_flags': flags}


def test_unwritable_outputs_fail_before_any_work(train_cfg, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    with pytest.raises(ConfigError, match='cannot be written'):
        train.main(dataclasses.replace(train_cfg, model='gpt', out_dir=str(blocker / 'run')))
    assert evaluate.cli(['--ckpt=missing.pt', f'--out={blocker}/r.json']) == 1


def test_bad_tokenizer_file_and_damaged_checkpoint_give_one_line(train_cfg, tmp_path, capsys):
    bad = tmp_path / 'tok.json'
    bad.write_text('{"not": "a tokenizer"}')
    argv = [str(ROOT / 'config' / 'test.py'), f'--dataset={train_cfg.dataset}', f'--tokenizer={bad}',
            f'--data_dir={tmp_path / "d"}', f'--out_dir={tmp_path / "o"}', '--model=gpt']
    assert train.cli(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith('error: --tokenizer=') and 'Traceback' not in err
    res = train.main(dataclasses.replace(train_cfg, model='gpt'))
    ck = torch.load(res['ckpt'], weights_only=True)
    del ck['model_config']
    torch.save(ck, tmp_path / 'damaged.pt')
    assert sample.cli([f'--ckpt={tmp_path / "damaged.pt"}', '--device=cpu']) == 1
    assert 'recorded config is missing or damaged' in capsys.readouterr().err
