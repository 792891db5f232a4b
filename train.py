"""Train the discrete baseline (--model=gpt), the autoencoder (--model=ae) or CALM (--model=calm).

    python train.py config/tiny.py                   # CALM end to end: the AE first if out/ae.pt is missing
    python train.py config/tiny.py --model=gpt       # the baseline at the same backbone size
    torchrun --nproc_per_node=8 train.py config/gpu_small.py   # DDP

Checkpoints are {out_dir}/{model}.pt, written atomically at every evaluation; --resume=true
continues one exactly (optimizer, step, every process's random generators, hence data position).
Every logged figure also goes to {out_dir}/{model}.jsonl.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

import torch

from calm_min.autoencoder import AEConfig, Autoencoder, state_hash
from calm_min.backbone import BackboneConfig
from calm_min.brierlm import evaluate_brier
from calm_min.calm import CALM, CALMConfig
from calm_min.checkpoint import (CheckpointError, autocast, load_autoencoder, load_checkpoint, pick_device,
                                 save_checkpoint, use_compile)
from calm_min.config import ConfigError, TrainConfig, parse_args
from calm_min.data import ChunkIndex, DataError, eval_blocks, lm_batch, load_corpus
from calm_min.gpt import GPT, GPTConfig

# settings that may change when resuming; any other difference is refused
RESUMABLE = {'max_iters', 'ae_max_iters', 'log_interval', 'eval_interval', 'device', 'compile', 'resume',
             'overwrite', 'num_samples', 'sample_tokens', 'brier_blocks', 'eval_iters', 'keep_checkpoints'}


def build_model(cfg: TrainConfig, tokenizer: dict, vocab_size: int, eot_id: int, ae: Autoencoder | None = None):
    """A fresh model for cfg.model. CALM wraps `ae` if given (benchmarks), else the frozen AE loaded
    and checked from cfg.ae_ckpt_path."""
    bb = BackboneConfig(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.ffn_hidden, cfg.rope_theta)
    if cfg.model == 'gpt':
        return GPT(GPTConfig(vocab_size, bb)), {}
    if cfg.model == 'ae':
        return Autoencoder(AEConfig(vocab_size, cfg.chunk_size, cfg.latent_size, cfg.ae_dim, cfg.ae_hidden,
                                    cfg.ae_blocks, cfg.token_dropout, cfg.latent_dropout, cfg.kl_clip,
                                    cfg.kl_beta, mask_id=eot_id)), {}
    extra = {}
    if ae is None:
        ae, ae_ckpt = load_autoencoder(cfg.ae_ckpt_path, tokenizer, cfg.chunk_size)
        extra = {'ae_config': dataclasses.asdict(ae.cfg), 'ae_hash': ae_ckpt['hash'],
                 'ae_path': str(cfg.ae_ckpt_path)}
    model = CALM(CALMConfig(vocab_size, cfg.chunk_size, ae.cfg.latent_size, bb, cfg.head_blocks, cfg.noise_size,
                            cfg.n_samples, cfg.n_targets, cfg.alpha), ae)
    return model, extra


def lr_at(cfg: TrainConfig, it: int, base_lr: float, max_iters: int) -> float:
    if it < cfg.warmup_iters:
        return base_lr * (it + 1) / cfg.warmup_iters
    if cfg.lr_schedule == 'constant':
        return base_lr
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters))
    return base_lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, cfg: TrainConfig, lr: float, device):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]            # weight decay on matrices only
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == 'cuda')


def check_resume(cfg: TrainConfig, ckpt: dict):
    old = ckpt['train_config']
    diff = [k for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE and old.get(k) != v]
    if diff:
        raise ConfigError("--resume: these settings differ from the checkpoint's run: "
                          + ', '.join(f"{k} (was {old.get(k)!r}, now {getattr(cfg, k)!r})" for k in diff)
                          + ". Resume with the same settings, or start a new run with --overwrite=true")


def setup_distributed(cfg: TrainConfig):
    """(ddp, rank, world size, device). Under torchrun (RANK set) the process group is started once
    (NCCL on CUDA, gloo on CPU); otherwise a single process on cfg.device."""
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 1, pick_device(cfg.device)
    import torch.distributed as dist
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group('nccl' if cuda else 'gloo')
    device = torch.device(f'cuda:{int(os.environ["LOCAL_RANK"])}') if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    return True, dist.get_rank(), dist.get_world_size(), device


def main(cfg: TrainConfig, _nested: bool = False) -> dict:
    """Train as cfg says; return {'losses': [...per iteration], 'evals': [...], 'ckpt': path}."""
    ddp, rank, world, device = setup_distributed(cfg)
    master = rank == 0
    log = (lambda *a, **k: print(*a, **k, flush=True)) if master else (lambda *a, **k: None)

    # -- everything the run needs is checked before any training ----------------------------------
    if ddp and not master:
        torch.distributed.barrier()                           # rank 0 prepares the data first
    corpus = load_corpus(cfg.dataset, cfg.tokenizer, cfg.vocab_size, cfg.data_dir, verbose=master)
    if ddp and master:
        torch.distributed.barrier()
    tok = corpus.tokenizer
    path = cfg.ckpt_path
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(path, (cfg.model,))
        check_resume(cfg, ckpt)
    elif path.exists() and not cfg.overwrite:
        raise ConfigError(f"{path} already exists: pass --resume=true to continue it, --overwrite=true to "
                          f"replace it, or another --out_dir")
    if cfg.model == 'calm' and not cfg.ae_ckpt_path.exists():
        if cfg.ae_ckpt:
            raise CheckpointError(f"--ae_ckpt={cfg.ae_ckpt}: file not found; train one with --model=ae")
        log(f"no autoencoder at {cfg.ae_ckpt_path}: training it first (stage 1)")
        main(dataclasses.replace(cfg, model='ae'), _nested=True)
    torch.manual_seed(cfg.seed)                               # the same initialisation on every rank
    model, extra = build_model(cfg, tok.identity, tok.vocab_size, tok.eot_id)
    if ckpt is not None:
        model.load_state_dict(ckpt['model'])
    model.to(device)

    is_ae = cfg.model == 'ae'
    max_iters = cfg.ae_max_iters if is_ae else cfg.max_iters
    base_lr = cfg.ae_lr if is_ae else cfg.lr
    optimizer = make_optimizer(model, cfg, base_lr, device)
    g_data = torch.Generator().manual_seed(cfg.seed + rank)
    g_model = torch.Generator(device=device).manual_seed(cfg.seed + 1000 + rank)
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt['optimizer'])
        start = ckpt['step']
        ranks = ckpt.get('rng_ranks') or [ckpt['rng']]        # per process; older files hold one 'rng'
        if len(ranks) == world:
            g_data.set_state(ranks[rank]['data'])
            g_model.set_state(ranks[rank]['model'])
            torch.set_rng_state(ranks[rank]['torch'])
        else:                                                 # fresh, distinct streams for the new layout
            g_data.manual_seed(cfg.seed + rank + 7919 * start)
            g_model.manual_seed(cfg.seed + 1000 + rank + 7919 * start)
            log(f"note: {path} was saved by {len(ranks)} process(es) and this run has {world}: training "
                f"continues, but its batches and noise differ from an uninterrupted run's")
        log(f"resumed {path} at step {start}")
    fwd = torch.compile(model) if use_compile(cfg.compile, device) else model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fwd = DDP(fwd, device_ids=[device.index] if device.type == 'cuda' else None)
    amp = autocast(device, cfg.dtype)

    # -- data for this kind of model ---------------------------------------------------------------
    K = cfg.chunk_size
    if is_ae:
        train_idx = ChunkIndex(corpus.tokens('train'), corpus.doc_starts('train'), K, tok.eot_id)
        val_idx = ChunkIndex(corpus.tokens('val'), corpus.doc_starts('val'), K, tok.eot_id)
        tokens_per_micro = cfg.ae_batch_size * K

        def get_batch(split, g):
            return ((train_idx if split == 'train' else val_idx).sample(cfg.ae_batch_size, g).to(device),)
    else:
        length = cfg.block_size + 1 if cfg.model == 'gpt' else cfg.block_size // K * K
        tokens_per_micro = cfg.batch_size * (length - (cfg.model == 'gpt'))
        data = {s: corpus.tokens(s) for s in ('train', 'val')}

        def get_batch(split, g):
            b = lm_batch(data[split], cfg.batch_size, length, g).to(device)
            return (b[:, :-1], b[:, 1:]) if cfg.model == 'gpt' else (b,)

    def run(batch, g):
        with amp:
            if cfg.model == 'gpt':
                return fwd(*batch)
            return fwd(*batch, generator=g)

    @torch.no_grad()
    def evaluate(it):
        model.eval()
        g = torch.Generator().manual_seed(0)                  # the same validation batches every time
        gm = torch.Generator(device=device).manual_seed(0)
        sums: dict = {}
        for _ in range(cfg.eval_iters):
            out, loss = run(get_batch('val', g), gm)
            sums['val_loss'] = sums.get('val_loss', 0.0) + loss.item()
            if is_ae:
                sums['val_acc'] = sums.get('val_acc', 0.0) + out['acc'].item()
        rec = {'iter': it, **{k: v / cfg.eval_iters for k, v in sums.items()}}
        if cfg.brier_blocks and not is_ae and master:
            blocks = eval_blocks(corpus.tokens('val'), cfg.block_size // K * K, cfg.brier_blocks)
            with amp:
                rec['val_brierlm'] = evaluate_brier(model, blocks, cfg.batch_size, seed=0, n_boot=100)['brierlm']
        model.train()
        return rec

    def save(it, evals):
        """Called by every process: each one's generator states go into rank 0's checkpoint."""
        mine = {'data': g_data.get_state(), 'model': g_model.get_state().cpu(), 'torch': torch.get_rng_state()}
        ranks = [mine]
        if ddp:
            ranks = [None] * world
            torch.distributed.all_gather_object(ranks, mine)
        if not master:
            return
        ckpt_path = path.with_name(f'{cfg.model}_{it}.pt') if cfg.keep_checkpoints else None
        for p in filter(None, (path, ckpt_path)):
            save_checkpoint(p, state(it, evals, ranks))

    def state(it, evals, ranks):
        return {
            'kind': cfg.model, 'model_config': dataclasses.asdict(model.cfg), 'train_config': dataclasses.asdict(cfg),
            'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': it,
            'rng_ranks': ranks,
            'tokenizer': tok.identity, 'tokenizer_json': tok.to_str(), 'evals': evals, **extra,
            **({'hash': state_hash(model)} if is_ae else {})}

    # -- the loop ---------------------------------------------------------------------------------
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{cfg.model}: {n_params / 1e6:.2f}M trainable parameters on {device}, {max_iters} iterations, "
        f"{tokens_per_micro * cfg.grad_accum * world:,} tokens per iteration")
    path.parent.mkdir(parents=True, exist_ok=True)
    jsonl = open(path.with_suffix('.jsonl'), 'a' if cfg.resume else 'w') if master else None

    def record(rec):
        log(' '.join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
        if jsonl:
            jsonl.write(json.dumps(rec) + '\n')
            jsonl.flush()

    evals = list(ckpt.get('evals', [])) if ckpt else []
    losses = []
    model.train()
    t0, t_start = time.time(), time.time()
    for it in range(start, max_iters):
        if it % cfg.eval_interval == 0 and it > start or (it == 0 and start == 0):
            rec = {'kind': 'eval', **evaluate(it)}
            evals.append(rec)
            record(rec)
            if it > start:
                save(it, evals)
        lr = lr_at(cfg, it, base_lr, max_iters)
        for group in optimizer.param_groups:
            group['lr'] = lr
        total = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            batch = get_batch('train', g_data)
            if ddp and micro < cfg.grad_accum - 1:
                with fwd.no_sync():
                    out, loss = run(batch, g_model)
                    (loss / cfg.grad_accum).backward()
            else:
                out, loss = run(batch, g_model)
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total = total.item()                                  # one host sync per iteration
        losses.append(total)
        if (it + 1) % cfg.log_interval == 0 or it == max_iters - 1:
            dt = time.time() - t0
            n_done = (it + 1 - start) % cfg.log_interval or cfg.log_interval
            tps = tokens_per_micro * cfg.grad_accum * world * n_done / dt
            eta = (max_iters - it - 1) * dt / n_done
            rec = {'kind': 'train', 'iter': it + 1, 'loss': total, 'lr': lr, 'tok_per_s': tps, 'eta_s': eta}
            if isinstance(out, dict):
                rec.update({k: v.item() for k, v in out.items() if v.dim() == 0})
            record(rec)
            t0 = time.time()
    if max_iters > start:
        rec = {'kind': 'eval', **evaluate(max_iters)}
        evals.append(rec)
        record(rec)
    save(max_iters, evals)
    if master:
        log(f"saved {path} after {time.time() - t_start:.0f}s")
        if cfg.num_samples and not is_ae:
            show_samples(model, tok, cfg, device)
    if jsonl:
        jsonl.close()
    if ddp:
        torch.distributed.barrier()                           # the checkpoint is written before anyone goes on
        if not _nested:
            torch.distributed.destroy_process_group()
    return {'losses': losses, 'evals': evals, 'ckpt': str(path)}


@torch.no_grad()
def show_samples(model, tok, cfg: TrainConfig, device):
    model.eval()
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    prompt = torch.full((cfg.num_samples, 1), tok.eot_id, dtype=torch.long, device=device)
    out = model.generate(prompt, cfg.sample_tokens, generator=g)
    for i, row in enumerate(out[:, 1:].tolist()):
        print(f"--- sample {i + 1} ({cfg.model}, T=1) ---\n{tok.decode(row)}")


if __name__ == '__main__':
    try:
        main(parse_args(sys.argv[1:], TrainConfig))
    except (ConfigError, DataError, CheckpointError) as e:
        sys.exit(f"error: {e}")
