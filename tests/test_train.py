import dataclasses
import math
import json
import subprocess
import sys
import types
import typing

import pytest
import torch

import train
from calm_min.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from calm_min.config import ConfigError, TrainConfig
from calm_min.data import DataError, load_corpus
from calm_min.tokenizer import Tokenizer
from conftest import ROOT


def log_records(path) -> list[dict]:
    """The records of a run's {model}.jsonl log."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gpt_trains_and_checkpoints(train_cfg):
    res = train.main(train_cfg)
    assert len(res['losses']) == 6 and all(torch.isfinite(torch.tensor(res['losses'])))
    ckpt = load_checkpoint(res['ckpt'], ('gpt',))
    assert ckpt['step'] == 6 and ckpt['tokenizer']['kind'] == 'bytes'
    assert not any(k.startswith('_orig_mod') for k in ckpt['model'])
    assert 'val_brierlm' in ckpt['evals'][-1]
    log = (train_cfg.ckpt_path.with_suffix('.jsonl')).read_text().splitlines()
    assert len(log) == 6 + 3  # a train line per iteration (log_interval=1), evals at 0, 3, 6


@pytest.mark.parametrize('model', ['gpt', 'ae', 'calm'])
def test_resume_equals_uninterrupted(train_cfg, tmp_path, model):
    cfg = dataclasses.replace(train_cfg, model=model, lr_schedule='constant')
    full = train.main(dataclasses.replace(cfg, out_dir=str(tmp_path / 'full')))
    half_cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / 'half'))
    if model == 'ae':
        first = train.main(dataclasses.replace(half_cfg, ae_max_iters=3))
    else:
        first = train.main(dataclasses.replace(half_cfg, max_iters=3,
                                               ae_ckpt=str(tmp_path / 'full' / 'ae.pt') if model == 'calm' else ''))
        half_cfg = dataclasses.replace(half_cfg, ae_ckpt=str(tmp_path / 'full' / 'ae.pt') if model == 'calm' else '')
    second = train.main(dataclasses.replace(half_cfg, resume=True))
    assert first['losses'] + second['losses'] == full['losses']
    a = load_checkpoint(full['ckpt'])['model']
    b = load_checkpoint(second['ckpt'])['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('model', ['gpt', 'calm'])
def test_training_targets_are_the_input_moved_on_by_one_step(train_cfg, monkeypatch, model):
    """What train.py feeds each model: targets of x's shape, x moved on by one token (the baseline: a
    window of block_size + 1 tokens) or by one chunk of K = 4 tokens (CALM: block_size tokens)."""
    from calm_min.calm import CALM
    from calm_min.gpt import GPT
    cls, shift, length = (GPT, 1, train_cfg.block_size) if model == 'gpt' else (CALM, 4, train_cfg.block_size - 4)
    seen, forward = [], cls.forward

    def spy(self, x, targets=None, generator=None):
        if self.training and targets is not None:
            seen.append((x, targets))
        return forward(self, x, targets, generator)

    monkeypatch.setattr(cls, 'forward', spy)
    train.main(dataclasses.replace(train_cfg, model=model, max_iters=2))
    assert len(seen) == 2
    for x, targets in seen:
        assert x.shape == targets.shape == (train_cfg.batch_size, length)
        assert torch.equal(targets[:, :-shift], x[:, shift:]) and not torch.equal(targets, x)


def test_learning_rate_schedule(train_cfg):
    """Linear warmup from lr / warmup_iters to lr, then a cosine from lr down to lr * min_lr_ratio at
    max_iters (or constant)."""
    cfg = dataclasses.replace(train_cfg, warmup_iters=10, min_lr_ratio=0.1, lr_schedule='cosine')
    lr = lambda it, c=cfg: train.lr_at(c, it, 2.0, 110)
    assert [lr(i) for i in (0, 4, 9)] == pytest.approx([0.2, 1.0, 2.0])
    assert lr(10) == pytest.approx(2.0) and lr(110) == pytest.approx(0.2) and lr(500) == pytest.approx(0.2)
    assert lr(60) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))                   # half way: the cosine's middle
    assert lr(35) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert all(lr(i) > lr(i + 1) for i in range(10, 110))
    const = dataclasses.replace(cfg, lr_schedule='constant')
    assert lr(0, const) == pytest.approx(0.2) and lr(10, const) == lr(109, const) == 2.0


def test_training_clips_validates_on_val_and_skips_an_infinite_gradient(train_cfg, monkeypatch, capsys):
    """Clipping at --grad_clip (none at 0); the evaluations' loss batches and BrierLM blocks come from
    the validation split; a step whose gradient norm is infinite (with a finite loss) is skipped."""
    corpus = train.load_corpus(train_cfg.dataset, train_cfg.tokenizer, train_cfg.vocab_size, train_cfg.data_dir,
                               verbose=False)
    n_val, n_train = len(corpus.tokens('val')), len(corpus.tokens('train'))
    assert n_val != n_train
    seen = {'clip': [], 'batches': [], 'blocks': []}
    clip, shifted_batch, eval_blocks = torch.nn.utils.clip_grad_norm_, train.shifted_batch, train.eval_blocks

    def clip_spy(params, max_norm, *a, **k):
        seen['clip'].append(max_norm)
        norm = clip(params, max_norm, *a, **k)
        return norm * math.inf if len(seen['clip']) == 2 else norm            # step 2: an infinite norm

    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', clip_spy)
    monkeypatch.setattr(train, 'shifted_batch', lambda t, *a: seen['batches'].append(len(t)) or shifted_batch(t, *a))
    monkeypatch.setattr(train, 'eval_blocks', lambda t, *a: seen['blocks'].append(len(t)) or eval_blocks(t, *a))
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=4, eval_interval=2, eval_iters=2, grad_clip=0.5,
                              skip_nonfinite=1)
    res = train.main(cfg)
    assert seen['clip'] == [0.5] * 4 and len(res['losses']) == 3               # one of 4 steps skipped
    assert 'non-finite loss or gradient at step 2: step skipped' in capsys.readouterr().out
    assert seen['batches'] == [n_val] * 2 + [n_train] * 2 + [n_val] * 2 + [n_train] * 2 + [n_val] * 2
    assert seen['blocks'] == [n_val] * 3                                      # evaluations at steps 0, 2, 4
    seen['clip'].clear()
    train.main(dataclasses.replace(cfg, grad_clip=0.0, overwrite=True))
    assert seen['clip'] == [math.inf] * 4                                     # measured, never clipped


def test_resume_with_another_process_count(train_cfg, capsys):
    """A checkpoint from 2 DDP processes resumed by 1: it continues, with fresh generators and a note."""
    train.main(dataclasses.replace(train_cfg, max_iters=3))
    ckpt = load_checkpoint(train_cfg.ckpt_path)
    assert len(ckpt['rng_ranks']) == 1
    ckpt['rng_ranks'] = ckpt['rng_ranks'] * 2
    save_checkpoint(train_cfg.ckpt_path, ckpt)
    res = train.main(dataclasses.replace(train_cfg, resume=True))
    assert len(res['losses']) == train_cfg.max_iters - 3
    assert 'was saved by 2 process(es) and this run has 1' in capsys.readouterr().out


def test_existing_checkpoint_not_overwritten(train_cfg):
    train.main(train_cfg)
    before = train_cfg.ckpt_path.read_bytes()
    with pytest.raises(ConfigError, match='already exists.*--resume=true.*--overwrite=true'):
        train.main(train_cfg)
    assert train_cfg.ckpt_path.read_bytes() == before


def test_resume_with_other_settings_refused(train_cfg):
    train.main(train_cfg)
    with pytest.raises(ConfigError, match='n_layer'):
        train.main(dataclasses.replace(train_cfg, resume=True, n_layer=3, max_iters=8))


def test_resume_refuses_a_changed_or_missing_autoencoder(train_cfg):
    """A CALM run resumes only on the autoencoder it began with: one retrained in place would be
    overridden by the weights the checkpoint embeds, and the file saved with the new one's hash."""
    cfg = dataclasses.replace(train_cfg, model='calm')
    train.main(cfg)                                           # the AE (stage 1), then CALM
    before = cfg.ckpt_path.read_bytes()
    train.main(dataclasses.replace(train_cfg, model='ae', ae_max_iters=4, overwrite=True))   # AE retrained
    with pytest.raises(ConfigError, match='has changed since'):
        train.main(dataclasses.replace(cfg, resume=True, max_iters=8))
    cfg.ae_ckpt_path.unlink()
    with pytest.raises(ConfigError, match='is missing'):
        train.main(dataclasses.replace(cfg, resume=True, max_iters=8))
    assert cfg.ckpt_path.read_bytes() == before               # nothing written


def test_corrupt_truncated_and_wrong_kind_checkpoints(train_cfg, tmp_path):
    res = train.main(train_cfg)
    data = open(res['ckpt'], 'rb').read()
    trunc = tmp_path / 'trunc.pt'
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_checkpoint(trunc)
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint at all')
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="is a checkpoint of kind 'gpt', but kind 'calm' is needed"):
        load_model(res['ckpt'], ('calm',))
    with pytest.raises(CheckpointError, match='not found'):
        load_checkpoint(tmp_path / 'missing.pt')
    with pytest.raises(CheckpointError, match='not found.*--model=ae`'):      # the kind the file name asks for
        load_checkpoint(tmp_path / 'ae.pt', ('gpt', 'calm', 'ae'))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'calm.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r'is a folder, not a checkpoint: pass a .pt file inside it \(calm.pt\)'):
        load_checkpoint(tmp_path / 'run')
    # resuming from a corrupt file: a clear error, and the file is left as it was
    train_cfg.ckpt_path.write_bytes(data[:100])
    with pytest.raises(CheckpointError, match='corrupt or truncated'):
        train.main(dataclasses.replace(train_cfg, resume=True))
    assert train_cfg.ckpt_path.read_bytes() == data[:100]


def test_missing_data_file(train_cfg, tmp_path):
    with pytest.raises(DataError, match='no such file or folder'):
        train.main(dataclasses.replace(train_cfg, dataset=str(tmp_path / 'missing.txt')))


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    r = subprocess.run([sys.executable, 'train.py', '--n_layrs=2'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and 'unknown option --n_layrs' in r.stderr and 'Traceback' not in r.stderr
    r = subprocess.run([sys.executable, 'train.py', f'--dataset={tmp_path}/none.txt', '--tokenizer=bytes',
                        f'--out_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and 'no such file or folder' in r.stderr and 'Traceback' not in r.stderr


def test_resumed_log_has_no_duplicate_records(train_cfg):
    """A run stopped after its step-3 checkpoint logged steps 4-6; resuming from step 3 replaces them
    and keeps those before: the log is the uninterrupted run's."""
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=6, eval_interval=3)
    train.main(cfg)
    whole = [(r['kind'], r['iter']) for r in log_records(cfg.ckpt_path.with_suffix('.jsonl'))]
    ck = load_checkpoint(cfg.ckpt_path)
    ck['step'], ck['finished'] = 3, False                     # as if stopped right after the step-3 save
    save_checkpoint(cfg.ckpt_path, ck)
    train.main(dataclasses.replace(cfg, resume=True))
    recs = log_records(cfg.ckpt_path.with_suffix('.jsonl'))
    keys = [(r['kind'], r['iter']) for r in recs]
    assert len(keys) == len(set(keys)) and ('train', 6) in keys
    assert keys == whole                                      # the records up to step 3 kept, in order


def test_mfu_is_logged_against_the_device_peak(train_cfg, monkeypatch):
    """Where the device's bf16 peak is known (CUDA), each train record has mfu = achieved training
    FLOP/s / peak; here a fake peak of 1 GFLOP/s stands in for a GPU's."""
    from calm_min.device import peak_bf16_flops
    assert peak_bf16_flops(torch.device('cpu')) is None
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'NVIDIA H200')
    assert peak_bf16_flops(torch.device('cuda')) == 989e12
    monkeypatch.setattr(train, 'peak_bf16_flops', lambda device: 1e9)
    train.main(train_cfg)
    recs = log_records(train_cfg.ckpt_path.with_suffix('.jsonl'))
    rec = [r for r in recs if r['kind'] == 'train'][-1]
    flops_per_step = rec['train_flops'] / rec['iter']
    tokens_per_step = train_cfg.batch_size * train_cfg.grad_accum * train_cfg.block_size
    assert rec['mfu'] == pytest.approx(flops_per_step * rec['tok_per_s'] / tokens_per_step / 1e9, rel=1e-6)


@pytest.mark.parametrize('name,peak', [('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA H100 PCIe', 756e12),
                                       ('NVIDIA H100 NVL', 835e12), ('NVIDIA A100-SXM4-80GB', 312e12),
                                       ('NVIDIA A10G', 70e12), ('NVIDIA A10', 125e12), ('NVIDIA L40S', 362e12),
                                       ('NVIDIA L40', 181e12), ('NVIDIA L4', 121e12), ('Tesla T4', None)])
def test_peak_of_each_gpu_name(name, peak, monkeypatch):
    """Names that hold another GPU's name (L40S, L40 and L4; H100 PCIe and H100) get their own peak;
    an unknown GPU gets None (no MFU logged)."""
    from calm_min.device import peak_bf16_flops
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: name)
    assert peak_bf16_flops(torch.device('cuda')) == peak


def test_keep_freed_memory_stops_the_page_faults_of_reallocation():
    """Under glibc's defaults a freed 64 MiB tensor allocated again faults every page in afresh; after
    `device.keep_freed_memory` (what train.py and bench.py call on CPU) the pages are reused. In a
    subprocess: the setting is process-wide."""
    pytest.importorskip('resource')                          # page-fault counts: POSIX only
    code = (
        "import resource, torch\n"
        "from calm_min.device import keep_freed_memory\n"
        "def faults():\n"
        "    n = []\n"
        "    for _ in range(4):\n"
        "        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "        x = torch.ones(16 * 2**20); del x\n"
        "        n.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
        "    return min(n[1:])\n"
        "before = faults(); kept = keep_freed_memory(torch.device('cpu')); after = faults()\n"
        "print(kept, before, after)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    kept, before, after = r.stdout.split()
    if kept != 'True':
        pytest.skip('not glibc: mallopt is unavailable')
    assert int(before) > 4000, f"glibc's default was expected to fault the 16384 pages in again: {before}"
    assert int(after) < int(before) // 10, (before, after)


def test_optimizer_is_adamw_with_decay_on_matrices_only(train_cfg):
    """make_optimizer (fused where torch has the kernel: CUDA, CPU from torch 2.4) takes the same steps
    as torch's one-tensor-at-a-time AdamW with weight decay on matrices and none on vectors, through
    changing learning rates."""
    cpu = torch.device('cpu')
    cfg = dataclasses.replace(train_cfg, weight_decay=0.3, beta1=0.8, beta2=0.9)
    torch.manual_seed(0)
    model = train.build_model(dataclasses.replace(cfg, model='gpt'), 257, 256)
    ref = [p.detach().clone().requires_grad_() for p in model.parameters()]
    opt = train.make_optimizer(model, cfg, 1e-2, cpu)
    assert opt.defaults['fused'] == (train.fused_adamw(cpu) or None)
    ref_opt = torch.optim.AdamW([{'params': [p for p in ref if p.dim() >= 2], 'weight_decay': 0.3},
                                 {'params': [p for p in ref if p.dim() < 2], 'weight_decay': 0.0}],
                                lr=1e-2, betas=(0.8, 0.9), foreach=False)
    g = torch.Generator().manual_seed(1)
    for lr in (1e-2, 3e-3, 5e-2):
        for o in (opt, ref_opt):
            for group in o.param_groups:
                group['lr'] = lr
        for p, q in zip(model.parameters(), ref):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for p, q in zip(model.parameters(), ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert any(p.dim() < 2 for p in ref) and any(p.dim() >= 2 for p in ref)


@pytest.mark.parametrize('saved_fused', [False, True])
def test_resume_uses_this_machines_adamw_kernel(train_cfg, monkeypatch, saved_fused):
    """A checkpoint written with the other AdamW kernel (by a version without the fused one on CPU, or
    by a torch that has it where this one has not) resumes with this machine's choice: torch's own
    load_state_dict would keep the file's."""
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=3)
    monkeypatch.setattr(train, 'fused_adamw', lambda device: saved_fused)
    train.main(cfg)
    assert load_checkpoint(cfg.ckpt_path)['optimizer']['param_groups'][0]['fused'] == (saved_fused or None)
    monkeypatch.setattr(train, 'fused_adamw', lambda device: not saved_fused)
    res = train.main(dataclasses.replace(cfg, max_iters=6, resume=True))
    ckpt = load_checkpoint(res['ckpt'])
    assert ckpt['step'] == 6
    assert [g['fused'] for g in ckpt['optimizer']['param_groups']] == [(not saved_fused) or None] * 2


def test_logged_throughput_eta_and_flops_count_the_steps_since_the_last_record(train_cfg, monkeypatch):
    """With a clock that moves 1 s per optimizer step, every train record's tok_per_s is the tokens of
    one step (batch x grad_accum x block), also the last record of a run that log_interval does not
    divide; eta_s is the steps left; train_flops, logged and saved, is iter x tokens x FLOPs per token."""
    clock = [0.0]
    clip = torch.nn.utils.clip_grad_norm_

    def tick(*a, **k):                                        # once per iteration, before the step
        clock[0] += 1.0
        return clip(*a, **k)
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', tick)
    monkeypatch.setattr(train, 'time', types.SimpleNamespace(time=lambda: clock[0]))
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=7, log_interval=3, grad_accum=2, batch_size=2,
                              eval_interval=100, brier_blocks=0, num_samples=0)
    train.main(cfg)
    recs = [r for r in log_records(cfg.ckpt_path.with_suffix('.jsonl')) if r['kind'] == 'train']
    assert [r['iter'] for r in recs] == [3, 6, 7]
    tokens = cfg.batch_size * cfg.grad_accum * cfg.block_size
    per_token = load_model(cfg.ckpt_path)[0].flops_per_token(cfg.block_size)['training']
    for r in recs:
        assert r['tok_per_s'] == pytest.approx(tokens), r
        assert r['eta_s'] == pytest.approx(cfg.max_iters - r['iter']), r
        assert r['train_flops'] == pytest.approx(r['iter'] * tokens * per_token), r
    assert load_checkpoint(cfg.ckpt_path)['train_flops'] == pytest.approx(7 * tokens * per_token)


def test_keep_checkpoints_keeps_every_evaluations_checkpoint(train_cfg):
    """--keep_checkpoints=true: beside gpt.pt, a gpt_{step}.pt at each evaluation (what
    experiments/brier_vs_ce.py scores)."""
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=6, eval_interval=3, keep_checkpoints=True)
    train.main(cfg)
    kept = sorted(cfg.ckpt_path.parent.glob('gpt_*.pt'))
    assert [p.name for p in kept] == ['gpt_3.pt', 'gpt_6.pt']
    assert [load_checkpoint(p)['step'] for p in kept] == [3, 6]
    last, final = load_checkpoint(kept[-1])['model'], load_checkpoint(cfg.ckpt_path)['model']
    assert all(torch.equal(last[k], final[k]) for k in final)


def test_each_stage_follows_its_own_learning_rate(train_cfg):
    """The autoencoder stage trains at --ae_lr over --ae_max_iters, CALM at --lr over --max_iters: the
    lr of each logged step is `lr_at` of its own stage."""
    cfg = dataclasses.replace(train_cfg, model='calm', lr=3e-3, ae_lr=7e-4, warmup_iters=2, ae_max_iters=5, max_iters=4)
    train.main(cfg)
    for kind, lr, n in (('ae', cfg.ae_lr, cfg.ae_max_iters), ('calm', cfg.lr, cfg.max_iters)):
        logged = [(r['iter'], r['lr']) for r in log_records(cfg.ckpt_path.with_name(f'{kind}.jsonl')) if r['kind'] == 'train']
        assert [i for i, _ in logged] == list(range(1, n + 1))
        assert [v for _, v in logged] == pytest.approx([train.lr_at(cfg, i - 1, lr, n) for i, _ in logged])


def test_samples_after_training_start_from_end_of_text(train_cfg, monkeypatch):
    """The samples train.py shows are generated from the tokenizer's end-of-text, as sample.py's are."""
    from calm_min.gpt import GPT
    prompts = []
    real = GPT.generate
    monkeypatch.setattr(GPT, 'generate', lambda self, prompt, *a, **k: prompts.append(prompt) or real(self, prompt, *a, **k))
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=1, num_samples=2, sample_tokens=4)
    train.main(cfg)
    ck = load_checkpoint(cfg.ckpt_path)
    eot = Tokenizer.from_str(ck['tokenizer_json'], ck['tokenizer']['kind']).eot_id
    assert len(prompts) == 1 and prompts[0].shape == (2, 1) and (prompts[0] == eot).all()


def test_resume_refuses_every_setting_that_changes_the_run(train_cfg):
    """A resumed run may change only how long it runs, how it logs, evaluates and saves, and where it
    runs (train.RESUMABLE, spelled out here); a change to any other setting, each tried in turn, is
    refused by name."""
    assert train.RESUMABLE == {'max_iters', 'ae_max_iters', 'log_interval', 'eval_interval', 'device', 'compile',
                               'resume', 'overwrite', 'num_samples', 'sample_tokens', 'brier_blocks', 'eval_iters',
                               'keep_checkpoints'}
    cfg = dataclasses.replace(train_cfg, model='gpt')
    ckpt = {'step': 3, 'train_config': dataclasses.asdict(cfg)}
    other = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 2 + 1, str: lambda v: v + 'x'}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        changed = dataclasses.replace(cfg, **{f.name: other[hints[f.name]](getattr(cfg, f.name))})
        if f.name in train.RESUMABLE:
            train.check_resume(changed, ckpt)
        else:
            with pytest.raises(ConfigError, match=f'these settings differ.*{f.name} '):
                train.check_resume(changed, ckpt)


def test_a_split_of_exactly_one_window_is_enough_and_one_token_less_is_not(train_cfg):
    """The baseline trains on windows of block_size + 1 tokens (its targets one token on): a val split
    of that many tokens is enough, one token fewer fails at the start with the reason."""
    corpus = load_corpus(train_cfg.dataset, train_cfg.tokenizer, train_cfg.vocab_size, train_cfg.data_dir, verbose=False)
    n = len(corpus.tokens('val'))
    assert n < len(corpus.tokens('train'))
    cfg = dataclasses.replace(train_cfg, model='gpt', max_iters=1, batch_size=1, eval_iters=1, brier_blocks=0, num_samples=0)
    with pytest.raises(DataError, match=f'val split has {n} tokens, fewer than one training window of {n + 1}'):
        train.main(dataclasses.replace(cfg, block_size=n))
    train.main(dataclasses.replace(cfg, block_size=n - 1))


def test_a_checkpoint_of_another_format_is_refused(train_cfg):
    """A checkpoint whose format number this code does not read is refused, with both numbers."""
    train.main(dataclasses.replace(train_cfg, model='gpt', max_iters=1))
    ck = load_checkpoint(train_cfg.ckpt_path)
    torch.save({**ck, 'format': 2}, train_cfg.ckpt_path)
    with pytest.raises(CheckpointError, match='format 2, this code reads 1'):
        load_checkpoint(train_cfg.ckpt_path)
