"""The slow tier (python -m pytest -m slow): multi-process DDP, and the autoencoder on real text."""
import dataclasses
import subprocess
import sys

import pytest
import torch

import train
from calm_min.checkpoint import load_checkpoint, load_model
from conftest import ROOT
from test_decode import compiler  # noqa: F401  (the fixture: skips where torch.compile is unavailable)

pytestmark = pytest.mark.slow


def test_ddp_two_processes_on_cpu(corpus_jsonl, tmp_path):
    """torchrun with 2 gloo processes trains the AE then CALM; one checkpoint, no _orig_mod/module prefixes."""
    out = tmp_path / 'ddp'
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'train.py', 'config/test.py', '--model=calm', f'--dataset={corpus_jsonl}', '--tokenizer=bytes',
                        f'--data_dir={tmp_path / "cache"}', f'--out_dir={out}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = load_checkpoint(out / 'calm.pt', ('calm',))
    assert ckpt['step'] == 6 and not any(k.startswith(('module.', '_orig_mod.')) for k in ckpt['model'])
    assert r.stdout.count('saved ') == 2                       # rank 0 alone writes: ae.pt, calm.pt


def test_ddp_resume_equals_uninterrupted(corpus_jsonl, tmp_path):
    """2 gloo processes: 3 steps, then --resume to 6, gives the weights of 6 uninterrupted steps
    (each process's generators are saved and restored, not only rank 0's)."""
    def run(out, *extra):
        r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                            'train.py', 'config/test.py', '--model=gpt', '--lr_schedule=constant',
                            f'--dataset={corpus_jsonl}', '--tokenizer=bytes', f'--data_dir={tmp_path / "cache"}',
                            f'--out_dir={tmp_path / out}', '--num_samples=0', *extra],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return load_checkpoint(tmp_path / out / 'gpt.pt', ('gpt',))
    full = run('full')
    run('half', '--max_iters=3')
    resumed = run('half', '--resume=true')
    assert len(full['rng_ranks']) == 2 and not torch.equal(full['rng_ranks'][0]['data'], full['rng_ranks'][1]['data'])
    assert resumed['step'] == full['step'] == 6
    assert all(torch.equal(full['model'][k], resumed['model'][k]) for k in full['model'])


def test_autoencoder_learns_real_text(train_cfg):
    """The AE on the bundled corpus (bytes, K=4, d_ae=128, l=32) passes 99% sampled-latent token
    accuracy on the validation split in 600 steps."""
    cfg = dataclasses.replace(train_cfg, model='ae', dataset='sotu', ae_dim=128, ae_hidden=256, latent_size=32,
                              ae_max_iters=600, ae_batch_size=256, ae_lr=3e-3, warmup_iters=20,
                              eval_interval=1000, log_interval=200, eval_iters=10)
    res = train.main(cfg)
    assert res['evals'][-1]['val_acc'] > 0.99
    ae, _ = load_model(res['ckpt'], ('ae',))
    assert ae.cfg.chunk_size == 4


def test_calm_uses_more_than_the_last_chunk():
    """The cycle 0 1 2 0 3 4 5 0: after chunk 0 comes 1, 3 or 0, decided by the chunk *before* the 0,
    so a model that reads only the last chunk gets at most 5/8 + 3/8 * 1/3 = 0.75 right. After 800
    steps seeds 0-2 reached 0.970-0.983; we ask for 0.9."""
    from test_calm import train_on_cycle
    import eval as evaluate
    from calm_min.config import EvalConfig
    acc, model, held_out = train_on_cycle([0, 1, 2, 0, 3, 4, 5, 0], steps=800)
    assert acc > 0.9
    e = evaluate.eval_context(model, held_out, EvalConfig(batch_size=16))
    assert e['energy_loss_full_context'] < e['energy_loss_last_chunk_only'] < e['energy_loss_other_context']


@pytest.mark.slow
def test_every_planted_bug_is_caught():
    """tests/mutation_check.py plants each of its bugs one at a time (restoring the code after each) and
    exits non-zero if the tests named for it miss any (about 30 minutes on 2 cores: 32 min for 208 entries)."""
    from mutation_check import M
    r = subprocess.run([sys.executable, str(ROOT / 'tests' / 'mutation_check.py')], cwd=ROOT,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0 and r.stdout.count('CAUGHT') == len(M) >= 210, r.stdout + r.stderr


def test_bench_compiled_paths(compiler):
    """bench.py's compiled variants at the test sizes: compiled and eager training of the three models
    (--train_compile=both), bf16 generation with the compiled step and CALM's parts compiled apart, and
    the profile of both models' compiled decoding steps."""
    from test_bench import bench_cfg
    import bench
    rep = bench.main(*bench_cfg('--what=training', '--train_compile=both'), ['--what=training'])
    tps = rep['training']['train_tokens_per_s']
    assert set(tps) == {f'{m}_float32{c}' for m in ('reference', 'gpt', 'calm') for c in ('', '_compiled')}
    assert all(v > 0 for v in tps.values()) and 'gpt_float32_compiled_over_reference_float32_compiled' in rep['training']['ratios']
    gen = bench.main(*bench_cfg('--what=generation', '--dtype=bfloat16'), ['--what=generation'])['generation']
    assert gen['dtype'] == 'bfloat16' and gen['calm_compiled_tokens_per_s'] > 0
    assert set(gen['calm_compiled_ms']) == {'step', 'compress', 'backbone', 'head', 'decoder', 'parts_sum'}
    assert all(v > 0 for v in gen['calm_compiled_ms'].values())
    prof = bench.main(*bench_cfg('--what=profile', '--profile=decoding'), ['--what=profile'])['profile']['decoding']
    for name in ('gpt', 'calm'):      # the compiled step's kernels and dynamo's guard check, per step
        assert prof[name]['self_cpu_ms_per_step']['compiled_kernels'] > 0 and prof[name]['self_cpu_ms_per_step']['guard_check'] > 0
