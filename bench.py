"""Benchmarks that print their figures, all measured in one run (ratios are what to read: this
machine is noisy). Models are freshly initialised at the sizes of a preset: speed does not depend on
the weights.

    python bench.py config/tiny.py                    # generation, training, energy-loss memory
    python bench.py config/tiny.py --what=memory --positions=4096
    python bench.py config/gpu_small.py --what=generation --device=cpu --dtype=float32

generation: CALM (K tokens per backbone step) vs the baseline of the same backbone, both with a KV
  cache, tokens/s, and the share of CALM's time in backbone, energy head and AE decoder; beside it
  the parameters each step multiplies with and the speedup they allow when weight reads bound a
  step (batch 1): K * gpt / calm. The CALM-only parts (compression, head, decoder) are a fixed cost
  per step, large beside a tiny backbone: compare config/tiny.py with config/gpu_small.py.
training:   tokens of text per second of a full training step (forward, backward, AdamW) for both,
  through torch.compile as train.py does (--compile: auto = on for CUDA); the first, untimed step
  compiles.
flops:      analytic FLOPs per token, inference and training, by part (calm_min/flops.py).
memory:     peak memory of energy_loss (forward + backward) at N samples, M targets, P positions,
  against a naive version that materialises the (N, M, P, l) difference tensor. On CPU each
  variant runs in a fresh subprocess and the figure is its peak resident memory (VmHWM, reset just
  before the call) minus its resident memory before the call.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from calm_min.config import ConfigError, TrainConfig, help_text, parse_args
from calm_min.device import autocast, pick_device, use_compile
from calm_min.energy_head import energy_loss
from train import build_model, make_optimizer


@dataclass
class BenchConfig:
    """The benchmark's own options; the model sizes come from a training preset and its flags."""
    what: str = 'all'              # all, generation, training, memory, flops
    gen_batch: int = 1             # sequences generated at once
    gen_tokens: int = 256          # new tokens per sequence
    train_steps: int = 10
    positions: int = 4096          # memory: P positions (e.g. 16 sequences x 256 chunk positions)
    mem_variant: str = ''          # internal: run one memory variant in this process
    repeats: int = 3

    def validate(self):
        if self.what not in ('all', 'generation', 'training', 'memory', 'flops'):
            raise ConfigError(f"--what must be all, generation, training, memory or flops; got {self.what!r}")
        for name in ('gen_batch', 'gen_tokens', 'train_steps', 'positions', 'repeats'):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")


def parse_bench_args(argv: list[str]) -> tuple[BenchConfig, TrainConfig]:
    """The benchmark's --flags go to BenchConfig, presets and every other flag to TrainConfig."""
    own = {f.name for f in dataclasses.fields(BenchConfig)}
    is_own = [a.startswith('--') and a[2:].partition('=')[0].replace('-', '_') in own for a in argv]
    if '-h' in argv or '--help' in argv:
        print(help_text(BenchConfig) + '\nand the model sizes, as train.py takes them:')
    bcfg = parse_args([a for a, o in zip(argv, is_own) if o], BenchConfig)
    return bcfg, parse_args([a for a, o in zip(argv, is_own) if not o], TrainConfig)


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def models(cfg, device):
    """A baseline and a CALM with the preset's sizes (random weights, the AE built in place)."""
    gpt = build_model(dataclasses.replace(cfg, model='gpt'), cfg.vocab_size, 0)
    ae = build_model(dataclasses.replace(cfg, model='ae'), cfg.vocab_size, 0)
    calm = build_model(dataclasses.replace(cfg, model='calm'), cfg.vocab_size, 0, ae=ae)
    torch.nn.init.normal_(calm.head.final_out.weight, std=0.02)  # a head that varies, as after training
    return gpt.to(device).eval(), calm.to(device).eval()


def params_read_per_step(gpt, calm) -> dict:
    """Parameters each generation step multiplies with (embedding rows that are only gathered do not
    count; a tied output projection does). At batch 1 a step is bound by reading these weights from
    memory, so K * gpt / calm_total is the speedup that a perfect implementation would reach there."""
    n = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
    ae = calm.ae
    parts = {'backbone': n(calm.backbone), 'compress': n(calm.compress), 'head': n(calm.head),
             'decoder': n(ae.dec_in, ae.dec_chunk, ae.dec_expand, ae.dec_tok, ae.dec_norm) + ae.emb.weight.numel()}
    return {'gpt': n(gpt.backbone) + gpt.tok_emb.weight.numel(), 'calm': sum(parts.values()), 'calm_parts': parts}


@torch.no_grad()
def bench_generation(bench, cfg, device, gpt, calm):
    B, n, K = bench.gen_batch, bench.gen_tokens, cfg.chunk_size
    prompt = torch.zeros(B, K, dtype=torch.long, device=device)
    amp = autocast(device, cfg.dtype)
    res = {}
    for name, fn in (('gpt', lambda g: gpt.generate(prompt, n, generator=g)),
                     ('calm', lambda g: calm.generate(prompt, n, generator=g))):
        with amp:
            fn(torch.Generator(device=device).manual_seed(0))  # warm-up
            best = float('inf')
            for r in range(bench.repeats):
                sync(device)
                t0 = time.perf_counter()
                fn(torch.Generator(device=device).manual_seed(r))
                sync(device)
                best = min(best, time.perf_counter() - t0)
        res[f'{name}_tokens_per_s'] = B * n / best
    res['speedup'] = res['calm_tokens_per_s'] / res['gpt_tokens_per_s']
    w = params_read_per_step(gpt, calm)
    res['params_read_per_step'] = w
    res['weight_bound_speedup'] = K * w['gpt'] / w['calm']
    # where CALM's time goes: one generate() with a timer around each part it calls (instance wrappers,
    # removed afterwards; the model's own loop runs unchanged)
    parts = {'backbone': 0.0, 'head': 0.0, 'decoder': 0.0}

    def timed(part, f):
        def wrapper(*a, **k):
            sync(device)
            t0 = time.perf_counter()
            out = f(*a, **k)
            sync(device)
            parts[part] += time.perf_counter() - t0
            return out
        return wrapper
    calm.hidden, calm.head.forward, calm.ae.decode = (timed('backbone', calm.hidden), timed('head', calm.head.forward),
                                                      timed('decoder', calm.ae.decode))
    try:
        with amp:
            calm.generate(prompt, n, generator=torch.Generator(device=device).manual_seed(0))
    finally:
        del calm.hidden, calm.head.forward, calm.ae.decode
    total = sum(parts.values())
    res['calm_time_share'] = {k: round(v / total, 3) for k, v in parts.items()}
    return res


def bench_flops(cfg, gpt, calm) -> dict:
    """Analytic FLOPs per token at a full context (calm_min/flops.py): inference and training, by part."""
    ctx = cfg.block_size // cfg.chunk_size * cfg.chunk_size
    g, c = gpt.flops_per_token(ctx), calm.flops_per_token(ctx)
    return {'context_tokens': ctx, 'gpt': g, 'calm': c, 'calm_over_gpt_inference': c['inference'] / g['inference'],
            'calm_over_gpt_training': c['training'] / g['training']}


def bench_training(bench, cfg, device, gpt, calm):
    res = {}
    amp = autocast(device, cfg.dtype)
    g = torch.Generator().manual_seed(0)
    compile_on = use_compile(cfg.compile, device)
    res['compiled'] = compile_on
    for name, model in (('gpt', gpt), ('calm', calm)):
        model.train()
        opt = make_optimizer(model, cfg, cfg.lr, device)
        gm = torch.Generator(device=device).manual_seed(0)
        fwd = torch.compile(model) if compile_on else model

        s, window = model.tokens_per_step, model.train_window(cfg.block_size)
        T = cfg.block_size // s * s                           # tokens of text per example (as train.py counts)

        def step():
            w = torch.randint(cfg.vocab_size, (cfg.batch_size, window), generator=g).to(device)
            with amp:
                _, loss = fwd(w[:, :-s], w[:, s:], generator=gm)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        for _ in range(2 if compile_on else 1):               # warm-up (and compilation)
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(bench.train_steps):
            step()
        sync(device)
        res[f'{name}_train_tokens_per_s'] = cfg.batch_size * T * bench.train_steps / (time.perf_counter() - t0)
        model.eval()
    res['calm_over_gpt'] = res['calm_train_tokens_per_s'] / res['gpt_train_tokens_per_s']
    return res


def naive_energy_loss(x, y, alpha=1.0):
    """Materialises every difference: (N, M, P, D) and (N, N, P, D)."""
    N, M = x.shape[0], y.shape[0]
    fid = (x[:, None] - y[None]).norm(dim=-1).pow(alpha).sum((0, 1))
    div = (x[:, None] - x[None]).norm(dim=-1).pow(alpha).sum((0, 1))
    return 2 / (N * M) * fid - div / (N * (N - 1))


def memory_variant(bench, cfg, device, variant) -> float:
    """Peak MiB used by energy_loss forward + backward beyond the inputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.n_samples, bench.positions, cfg.latent_size, generator=g).to(device).requires_grad_()
    y = torch.randn(cfg.n_targets, bench.positions, cfg.latent_size, generator=g).to(device)
    fn = energy_loss if variant == 'ours' else naive_energy_loss
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(x, y).sum().backward()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = rss_reset_peak()
    fn(x, y).sum().backward()
    return (peak_rss() - base) / 2**20


def rss_reset_peak() -> int:
    """Reset this process's peak resident memory (Linux: clear_refs 5) and return the current one, bytes."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _status('VmRSS')


def peak_rss() -> int:
    return _status('VmHWM')


def _status(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status: CPU memory measurement needs Linux")


def bench_memory(bench, cfg, device, argv):
    res = {'N': cfg.n_samples, 'M': cfg.n_targets, 'P': bench.positions, 'l': cfg.latent_size}
    for variant in ('ours', 'naive'):
        if device.type == 'cuda':
            res[f'{variant}_peak_mib'] = memory_variant(bench, cfg, device, variant)
        else:
            out = subprocess.run([sys.executable, __file__, *argv, f'--mem_variant={variant}', '--what=memory'],
                                 capture_output=True, text=True, check=True)
            res[f'{variant}_peak_mib'] = json.loads(out.stdout.strip().splitlines()[-1])['peak_mib']
    res['naive_over_ours'] = res['naive_peak_mib'] / max(res['ours_peak_mib'], 1e-9)
    return res


def main(bench: BenchConfig, cfg: TrainConfig, argv=()) -> dict:
    device = pick_device(cfg.device)
    if bench.mem_variant:
        r = {'peak_mib': memory_variant(bench, cfg, device, bench.mem_variant)}
        print(json.dumps(r))
        return r
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    report = {'device': str(device), 'threads': threads, 'torch': torch.__version__,
              'sizes': {k: getattr(cfg, k) for k in ('vocab_size', 'n_layer', 'n_embd', 'chunk_size', 'latent_size',
                                                      'ae_dim', 'head_blocks', 'block_size', 'batch_size')}}
    gpt, calm = models(cfg, device)
    if bench.what in ('all', 'generation'):
        report['generation'] = bench_generation(bench, cfg, device, gpt, calm)
        report['generation'].update(batch=bench.gen_batch, new_tokens=bench.gen_tokens)
    if bench.what in ('all', 'flops'):
        report['flops'] = bench_flops(cfg, gpt, calm)
    if bench.what in ('all', 'training'):
        report['training'] = bench_training(bench, cfg, device, gpt, calm)
    if bench.what in ('all', 'memory'):
        report['memory'] = bench_memory(bench, cfg, device, [a for a in argv if not a.startswith('--what')])
    print(json.dumps(report, indent=1))
    return report


if __name__ == '__main__':
    try:
        main(*parse_bench_args(sys.argv[1:]), sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
