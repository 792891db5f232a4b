"""Train the discrete baseline (--model=gpt), the autoencoder (--model=ae) or CALM (--model=calm).

    python train.py config/tiny.py                   # CALM end to end: the AE first if out/tiny/ae.pt is missing
    python train.py config/tiny.py --model=gpt       # the baseline at the same backbone size
    torchrun --nproc_per_node=8 train.py config/gpu_small.py   # DDP

One script for every model: each has forward(x, targets, generator) -> (output, loss), so the loop
below never asks which model it trains. CALM needs a trained autoencoder; when there is none, the
run has two stages, the autoencoder's and then CALM's, trained one after the other by the same loop.

Checkpoints are {out_dir}/{model}.pt, written atomically at every evaluation; --resume=true
continues one exactly (optimizer, step, every process's random generators, hence data position).
Every logged figure also goes to {out_dir}/{model}.jsonl.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from calm_min.autoencoder import Autoencoder
from calm_min.brierlm import evaluate_brier
from calm_min.calm import CALM
from calm_min.checkpoint import (CheckpointError, load_autoencoder, load_checkpoint, save_checkpoint,
                                 state_hash)
from calm_min.config import ConfigError, TrainConfig, run_cli
from calm_min.data import ChunkIndex, DataError, eval_blocks, load_corpus, shifted_batch
from calm_min.device import autocast, keep_freed_memory, peak_bf16_flops, pick_device, use_compile
from calm_min.gpt import GPT

class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or inf; the message names the last good checkpoint."""


# settings that may change when resuming; any other difference is refused
RESUMABLE = {'max_iters', 'ae_max_iters', 'log_interval', 'eval_interval', 'device', 'compile', 'resume',
             'overwrite', 'num_samples', 'sample_tokens', 'brier_blocks', 'eval_iters', 'keep_checkpoints'}


def build_model(cfg: TrainConfig, vocab_size: int, eot_id: int, ae: Autoencoder | None = None):
    """A freshly initialised model for cfg.model; CALM wraps the given (frozen) autoencoder."""
    if cfg.model == 'gpt':
        return GPT(cfg.gpt_config(vocab_size))
    if cfg.model == 'ae':
        return Autoencoder(cfg.ae_config(vocab_size, mask_id=eot_id))
    return CALM(cfg.calm_config(), ae)


def lr_at(cfg: TrainConfig, it: int, base_lr: float, max_iters: int) -> float:
    if it < cfg.warmup_iters:
        return base_lr * (it + 1) / cfg.warmup_iters
    if cfg.lr_schedule == 'constant':
        return base_lr
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters))
    return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def fused_adamw(device) -> bool:
    """Whether torch has a fused AdamW kernel (one call per parameter group, no Python loop over the
    parameters) for `device`: CUDA, and CPU from torch 2.4. On CPU it makes the quick start's autoencoder steps about
    4-6% faster and CALM's 1-3% (docs/throughput.md, *Fused AdamW on CPU*)."""
    return device.type == 'cuda' or (device.type == 'cpu' and torch.__version__ >= (2, 4))


def make_optimizer(model, cfg: TrainConfig, lr: float, device):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]            # weight decay on matrices only
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    fused = fused_adamw(device) or None                    # None: torch's own default path for the device
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=fused)


def load_optimizer_state(optimizer, state: dict):
    """Resume AdamW from a checkpoint with the kernel `optimizer` was made with (make_optimizer's choice
    for this machine). torch's load_state_dict also restores the file's `fused` flag, so a file written
    without the fused kernel (an earlier version, another torch) would resume on the slow path, and one
    written with it could not resume where torch lacks it."""
    fused = optimizer.defaults['fused']
    optimizer.load_state_dict({**state, 'param_groups': [{**g, 'fused': fused} for g in state['param_groups']]})


def check_resume(cfg: TrainConfig, ckpt: dict):
    max_iters = cfg.ae_max_iters if cfg.model == 'ae' else cfg.max_iters
    if max_iters < ckpt['step']:
        flag = 'ae_max_iters' if cfg.model == 'ae' else 'max_iters'
        raise ConfigError(f"--resume: the checkpoint is at step {ckpt['step']}, beyond --{flag}={max_iters}; a run "
                          f"cannot resume backwards. Pass --{flag} >= {ckpt['step']}, or start anew with --overwrite=true")
    if cfg.model == 'calm':                                   # the autoencoder it was trained with, unchanged
        ae_path, why = cfg.ae_ckpt_path, ''
        if not ae_path.is_file():
            why = 'is missing'
        elif load_checkpoint(ae_path, ('ae',)).get('hash') != ckpt.get('ae_hash'):
            why = 'has changed since (retrained or replaced: its hash differs)'
        if why:
            raise ConfigError(f"--resume: the autoencoder this CALM run was trained with, {ae_path}, {why}. Put "
                              f"it back there, or start CALM anew with --overwrite=true")
    old = ckpt['train_config']
    diff = [k for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE and old.get(k) != v]
    if diff:
        raise ConfigError("--resume: these settings differ from the checkpoint's run: "
                          + ', '.join(f"{k} (was {old.get(k)!r}, now {getattr(cfg, k)!r})" for k in diff)
                          + ". Resume with the same settings, or start a new run with --overwrite=true")


def check_writable(folder: Path, flag: str):
    """`folder` exists and is writable, or can be created (its nearest existing parent is a writable
    folder); else a ConfigError naming the flag. Nothing is created here."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"--{flag}={folder} cannot be written ({p} is not a writable folder): choose another")


def check_output_file(path: str, flag: str, kind: str, starts: tuple[bytes, ...], example: str):
    """Before any work: --flag=path can be written, and writing it replaces at most an earlier file of
    its kind (one whose first bytes, after whitespace, begin with one of `starts`), never a checkpoint
    or any other file; else a ConfigError naming the flag."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--{flag}={path} is a folder: give a file name, e.g. --{flag}={p / example}")
    check_writable(p.resolve().parent, flag)
    if p.is_file() and p.stat().st_size:
        with open(p, 'rb') as f:
            if not f.read(64).lstrip().startswith(starts):
                raise ConfigError(f"--{flag}={path} exists and is not {kind}: it would be overwritten; "
                                  f"choose another file")


def check_output(cfg: TrainConfig):
    """Before any training: the run may write (or resume) cfg.ckpt_path."""
    check_writable(cfg.ckpt_path.parent, 'out_dir')
    if cfg.resume:
        if not cfg.ckpt_path.is_file():
            raise ConfigError(f"--resume=true but there is no {cfg.ckpt_path} to continue: check --out_dir and "
                              f"--model, or drop --resume to start a new run")
        check_resume(cfg, load_checkpoint(cfg.ckpt_path, (cfg.model,)))
    elif cfg.ckpt_path.exists() and not cfg.overwrite:
        raise ConfigError(f"{cfg.ckpt_path} already exists: pass --resume=true to continue it, --overwrite=true "
                          f"to replace it, or another --out_dir")


@dataclasses.dataclass
class Dist:
    """This process's place in the run: DDP or not, rank, world size, device."""
    ddp: bool
    rank: int
    world: int
    device: torch.device

    @property
    def master(self) -> bool:
        return self.rank == 0

    def log(self, *a):
        if self.master:
            print(*a, flush=True)

    def barrier(self):
        if self.ddp:
            torch.distributed.barrier()


def setup_distributed(cfg: TrainConfig) -> Dist:
    """Under torchrun (RANK set) the process group is started once (NCCL on CUDA, gloo on CPU);
    otherwise a single process on cfg.device."""
    if int(os.environ.get('RANK', -1)) == -1:
        return Dist(False, 0, 1, pick_device(cfg.device))
    import torch.distributed as dist
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo')
    device = torch.device(f'cuda:{int(os.environ["LOCAL_RANK"])}') if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    return Dist(True, dist.get_rank(), dist.get_world_size(), device)


def main(cfg: TrainConfig) -> dict:
    """Train as cfg says; return the last stage's {'losses': [...per iteration], 'evals': [...], 'ckpt': path}."""
    dist = setup_distributed(cfg)
    keep_freed_memory(dist.device)                           # CPU: no page faults from memory freed between steps
    # the data: rank 0 tokenizes and prepares it first, the others then read it
    if not dist.master:
        dist.barrier()
    corpus = load_corpus(cfg.dataset, cfg.tokenizer, cfg.vocab_size, cfg.data_dir, verbose=dist.master)
    if dist.master:
        dist.barrier()
    # the stages: CALM without an autoencoder trains one first (stage 1), then itself (stage 2)
    stages = [cfg]
    if cfg.model == 'calm' and not cfg.ae_ckpt:
        if not cfg.ae_ckpt_path.exists():
            stages = [dataclasses.replace(cfg, model='ae', resume=False), cfg]
        elif not load_checkpoint(cfg.ae_ckpt_path, ('ae',)).get('finished', True):
            dist.log(f"{cfg.ae_ckpt_path} is from an autoencoder run that did not finish: resuming it first")
            # --resume=true (what a stopped run advises) continues the AE; CALM then starts, unless it had begun
            calm = cfg if cfg.ckpt_path.exists() else dataclasses.replace(cfg, resume=False)
            stages = [dataclasses.replace(cfg, model='ae', resume=True, overwrite=False), calm]
    elif cfg.model == 'calm' and not cfg.ae_ckpt_path.exists():
        raise CheckpointError(f"--ae_ckpt={cfg.ae_ckpt}: file not found; train one with --model=ae")
    if cfg.model != 'ae':                                     # a language model needs one whole training window
        need = cfg.block_size // cfg.chunk_size * cfg.chunk_size if cfg.model == 'calm' else cfg.block_size + 1
        for split in ('train', 'val'):
            if len(corpus.tokens(split)) < need:
                raise DataError(f"the {split} split has {len(corpus.tokens(split))} tokens, fewer than one training "
                                f"window of {need}: lower --block_size or use a larger corpus")
    for stage in stages:                                     # every output is checked before any training
        check_output(stage)
    for i, stage in enumerate(stages):
        if len(stages) > 1:
            dist.log(f"stage {i + 1} of {len(stages)}: {stage.model}"
                     + (f" (no autoencoder at {cfg.ae_ckpt_path}: training it first)" if i == 0 else ''))
        result = train(stage, corpus, dist)
    if dist.ddp:
        torch.distributed.destroy_process_group()
    return result


def train(cfg: TrainConfig, corpus, dist: Dist) -> dict:
    """One model, from setup to its final checkpoint."""
    device, tok, path = dist.device, corpus.tokenizer, cfg.ckpt_path

    # -- model ------------------------------------------------------------------------------------
    ckpt = load_checkpoint(path, (cfg.model,)) if cfg.resume else None
    torch.manual_seed(cfg.seed)                               # the same initialisation on every rank
    ae, extra = None, {}
    if cfg.model == 'calm':
        ae, ae_ckpt = load_autoencoder(cfg.ae_ckpt_path, tok.identity, cfg.chunk_size)
        extra = {'ae_config': dataclasses.asdict(ae.cfg), 'ae_hash': state_hash(ae), 'ae_path': str(cfg.ae_ckpt_path)}
        if ae.cfg.latent_size != cfg.latent_size:
            dist.log(f"note: the autoencoder {cfg.ae_ckpt_path} has latent_size {ae.cfg.latent_size}; "
                     f"--latent_size={cfg.latent_size} applies only to a newly trained autoencoder")
    model = build_model(cfg, tok.vocab_size, tok.eot_id, ae)
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
    model.to(device)
    fwd = torch.compile(model) if use_compile(cfg.compile, device) else model
    if dist.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(fwd, device_ids=[device.index] if device.type == 'cuda' else None)
    amp = autocast(device, cfg.dtype)

    # -- optimizer and random generators (restored when resuming) --------------------------------
    is_ae = cfg.model == 'ae'
    max_iters = cfg.ae_max_iters if is_ae else cfg.max_iters
    base_lr = cfg.ae_lr if is_ae else cfg.lr
    optimizer = make_optimizer(model, cfg, base_lr, device)
    g_data = torch.Generator().manual_seed(cfg.seed + dist.rank)
    g_model = torch.Generator(device=device).manual_seed(cfg.seed + 1000 + dist.rank)
    start = 0
    if ckpt is not None:
        load_optimizer_state(optimizer, ckpt['optimizer'])
        start = ckpt['step']
        ranks = ckpt.get('rng_ranks') or [ckpt['rng']]        # per process; older files hold one 'rng'
        if len(ranks) == dist.world:
            g_data.set_state(ranks[dist.rank]['data'])
            g_model.set_state(ranks[dist.rank]['model'])
            torch.set_rng_state(ranks[dist.rank]['torch'])
        else:                                                 # fresh, distinct streams for the new layout
            g_data.manual_seed(cfg.seed + dist.rank + 7919 * start)
            g_model.manual_seed(cfg.seed + 1000 + dist.rank + 7919 * start)
            dist.log(f"note: {path} was saved by {len(ranks)} process(es) and this run has {dist.world}: "
                     f"training continues, but its batches and noise differ from an uninterrupted run's")
        dist.log(f"resumed {path} at step {start}")

    # -- data: (x, targets) batches. The AE reads single chunks; a language model reads windows of
    # text, its targets the input shifted by one prediction step (1 token, or one chunk of K) --------
    if is_ae:
        K = cfg.chunk_size
        chunks = {s: ChunkIndex(corpus.tokens(s), corpus.doc_starts(s), K, tok.eot_id) for s in ('train', 'val')}
        tokens_per_micro = cfg.ae_batch_size * K

        def get_batch(split, g):
            return chunks[split].sample(cfg.ae_batch_size, g).to(device), None
    else:
        s, window = model.tokens_per_step, model.train_window(cfg.block_size)
        text = {split: corpus.tokens(split) for split in ('train', 'val')}
        tokens_per_micro = cfg.batch_size * (cfg.block_size // s * s)

        def get_batch(split, g):
            return shifted_batch(text[split], cfg.batch_size, window, s, g, device)

    # -- logging, evaluation, checkpoints ---------------------------------------------------------
    def record(rec):
        dist.log(' '.join([rec['kind']] + [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in rec.items() if k != 'kind']))
        if jsonl:
            jsonl.write(json.dumps(rec) + '\n')
            jsonl.flush()

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        g = torch.Generator().manual_seed(0)                  # the same validation batches every time
        gm = torch.Generator(device=device).manual_seed(0)
        sums: dict = {}
        for _ in range(cfg.eval_iters):
            x, y = get_batch('val', g)
            with amp:
                out, loss = fwd(x, y, generator=gm)
            sums['val_loss'] = sums.get('val_loss', 0.0) + loss.item()
            if is_ae:
                sums['val_acc'] = sums.get('val_acc', 0.0) + out['acc'].item()
        rec = {'kind': 'eval', 'iter': it, **{k: v / cfg.eval_iters for k, v in sums.items()}}
        if cfg.brier_blocks and not is_ae and dist.master:
            blocks = eval_blocks(corpus.tokens('val'), cfg.block_size // s * s, cfg.brier_blocks)
            with amp:
                rec['val_brierlm'] = evaluate_brier(model, blocks, cfg.batch_size, seed=0, n_boot=100)['brierlm']
        model.train()
        evals.append(rec)
        record(rec)

    def save(it):
        """Called by every process: each one's generator states go into rank 0's checkpoint. Refuses
        non-finite weights (the previous checkpoint stays); marks whether the run has finished."""
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise TrainingDiverged(f"the weights hold NaN or inf at step {it}: not saved; the last good checkpoint "
                                   f"is {path} (step {last_saved[0]})" if last_saved[0] is not None else
                                   f"the weights hold NaN or inf at step {it}: not saved")
        mine = {'data': g_data.get_state(), 'model': g_model.get_state().cpu(), 'torch': torch.get_rng_state()}
        ranks = [mine]
        if dist.ddp:
            ranks = [None] * dist.world
            torch.distributed.all_gather_object(ranks, mine)
        if not dist.master:
            return
        state = {'kind': cfg.model, 'model_config': dataclasses.asdict(model.cfg),
                 'train_config': dataclasses.asdict(cfg), 'model': model.state_dict(),
                 'optimizer': optimizer.state_dict(), 'step': it, 'finished': it >= max_iters, 'rng_ranks': ranks,
                 'train_flops': it * flops_per_step,
                 'tokenizer': tok.identity, 'tokenizer_json': tok.to_str(), 'evals': evals, **extra,
                 **({'hash': state_hash(model)} if is_ae else {})}
        save_checkpoint(path, state)
        if cfg.keep_checkpoints:
            save_checkpoint(path.with_name(f'{cfg.model}_{it}.pt'), state)
        last_saved[0] = it

    tokens_per_step = tokens_per_micro * cfg.grad_accum * dist.world
    flops_per_step = tokens_per_step * model.flops_per_token(cfg.block_size)['training']
    peak = peak_bf16_flops(device)                        # None off CUDA or for an unknown GPU: no MFU
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dist.log(f"{cfg.model}: {n_params / 1e6:.2f}M trainable parameters on {device}, {max_iters} iterations, "
             f"{tokens_per_micro * cfg.grad_accum * dist.world:,} tokens per iteration")
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl = None
    if dist.master:                                           # resuming: drop records past the checkpoint's step
        log_path = path.with_suffix('.jsonl')
        kept = [r for r in (log_path.read_text().splitlines() if cfg.resume and log_path.exists() else [])
                if r.strip() and json.loads(r).get('iter', 0) <= start]
        jsonl = open(log_path, 'w')
        jsonl.write(''.join(r + '\n' for r in kept))
    evals = list(ckpt.get('evals', [])) if ckpt else []
    last_saved = [start if ckpt else None]                   # step of the last checkpoint this run can point to
    stop_signal: list = []                                    # set by SIGTERM / SIGINT, acted on between steps
    handlers = {sig: signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)} if threading.current_thread() is threading.main_thread() else {}

    # -- the loop ---------------------------------------------------------------------------------
    try:
        losses = []
        model.train()
        t0, t_start = time.time(), time.time()
        skipped = 0
        for it in range(start, max_iters):
            if stop_signal:                                       # SIGTERM / SIGINT: save this step and leave
                save(it)
                dist.log(f"stopped by signal {stop_signal[0]} at step {it}: saved {path}; continue it with --resume=true")
                raise SystemExit(128 + stop_signal[0])
            if it % cfg.eval_interval == 0 and it > start or (it == 0 and start == 0):
                evaluate(it)
                if it > start:
                    save(it)
            lr = lr_at(cfg, it, base_lr, max_iters)
            for group in optimizer.param_groups:
                group['lr'] = lr
            total = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = get_batch('train', g_data)
                last = not dist.ddp or micro == cfg.grad_accum - 1  # DDP: all-reduce on the last micro-step only
                with contextlib.nullcontext() if last else fwd.no_sync():
                    with amp:
                        out, loss = fwd(x, y, generator=g_model)
                    (loss / cfg.grad_accum).backward()
                total += loss.detach() / cfg.grad_accum
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)  # inf: measure only
            total, norm = torch.stack([total, norm.to(total.device)]).tolist()   # one host sync per iteration
            if not (math.isfinite(total) and math.isfinite(norm)):           # divergence guard: never step on NaN
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                if skipped > cfg.skip_nonfinite:
                    raise TrainingDiverged(
                        f"non-finite {'loss' if not math.isfinite(total) else 'gradient norm'} at step {it + 1} "
                        f"({skipped} such step(s), --skip_nonfinite={cfg.skip_nonfinite}); nothing was saved for it. "
                        + (f"The last good checkpoint is {path} (step {last_saved[0]})" if last_saved[0] is not None
                           else "No checkpoint was written by this run") + ": lower --lr, check the data, or resume")
                dist.log(f"warning: non-finite loss or gradient at step {it + 1}: step skipped "
                         f"({skipped} of at most {cfg.skip_nonfinite})")
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
            if (it + 1) % cfg.log_interval == 0 or it == max_iters - 1:
                dt = time.time() - t0
                n_done = (it + 1 - start) % cfg.log_interval or cfg.log_interval
                tps = tokens_per_micro * cfg.grad_accum * dist.world * n_done / dt
                eta = (max_iters - it - 1) * dt / n_done
                rec = {'kind': 'train', 'iter': it + 1, 'loss': total, 'lr': lr, 'tok_per_s': tps, 'eta_s': eta,
                       'train_flops': (it + 1) * flops_per_step}
                if peak:                                      # model FLOPs utilisation, all ranks together
                    rec['mfu'] = flops_per_step * n_done / dt / (peak * dist.world)
                if isinstance(out, dict):
                    rec.update({k: v.item() for k, v in out.items() if v.dim() == 0})
                record(rec)
                t0 = time.time()
        if max_iters > start:
            evaluate(max_iters)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if jsonl:
            jsonl.flush()

    # -- save, show samples ------------------------------------------------------------------------
    save(max_iters)
    if dist.master:
        dist.log(f"saved {path} after {time.time() - t_start:.0f}s")
        if cfg.num_samples and not is_ae:
            show_samples(model, tok, cfg, device)
    if jsonl:
        jsonl.close()
    dist.barrier()                                            # the checkpoint is written before anyone goes on
    return {'losses': losses, 'evals': evals, 'ckpt': str(path)}


@torch.no_grad()
def show_samples(model, tok, cfg: TrainConfig, device):
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    prompt = torch.full((cfg.num_samples, 1), tok.eot_id, dtype=torch.long, device=device)
    out = model.generate(prompt, cfg.sample_tokens, generator=g)
    for i, row in enumerate(out[:, 1:].tolist()):
        print(f"--- sample {i + 1} ({cfg.model}, T=1) ---\n{tok.decode(row)}")


def cli(argv: list[str]) -> int:
    return run_cli(main, TrainConfig, argv, (ConfigError, DataError, CheckpointError, TrainingDiverged, OSError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
