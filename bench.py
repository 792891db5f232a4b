"""Benchmarks that print their figures, all measured in one run (ratios are what to read: this
machine is noisy). Models are freshly initialised at the sizes of a preset: speed does not depend on
the weights.

    python bench.py config/tiny.py                    # generation, training, energy-loss memory
    python bench.py config/tiny.py --what=memory --positions=4096
    python bench.py config/tiny.py --what=training --train_dtypes=float32,bfloat16 --train_compile=both
    python bench.py config/tiny.py --what=profile     # torch.profiler: training steps, compiled decoding steps
    python bench.py config/tiny.py --what=ablation --train_dtypes=float32 --repeats=20 --train_steps=3
    python bench.py config/gpu_small.py --what=generation --device=cpu --dtype=float32
    python bench.py config/tiny.py --what=generation --dtype=bfloat16 --gen_ref_dtype=float32

Every figure is set beside `Reference`, a plain GPT-2-style model written here in the manner of
nanoGPT (LayerNorm, GELU MLP of width 4d, learned positions, biases, SDPA, tied head) with the
baseline's layers, width and heads, so about its parameter count: a yardstick for the backbone's
implementation, not a model of calm-min. On CPU the process keeps the memory it frees
(`device.keep_freed_memory`), as train.py does, so no model pays page faults for memory glibc gave back.

generation: tokens/s at batch --gen_batch for the reference without a KV cache (the nanoGPT loop),
  the baseline and CALM with the cache, eager and with the compiled static-shape decoding step
  (`generate(compile=True)`; --gen_compile=false skips it), and on CUDA that step replayed as a
  CUDA graph (`compile='cudagraphs'`; --gen_cudagraphs=true/false), each as a multiple of the reference;
  the share of CALM's (eager) time in backbone, energy head and AE decoder; the parameters each step
  multiplies with and the speedup they allow when weight reads bound a step (batch 1): K * gpt / calm.
  'weight_read_ms' times reading each model's step weights once on this machine (their bytes, summed
  as one buffer), and 'measured_weight_bound_speedup' is the weight bound from those times: it
  differs from the parameter count's where one model's weights fit a cache and the other's do not.
  Rounds alternate the variants (--repeats rounds, the best of each kept); 'ratios_by_round' gives
  the speedups round by round too (median, lowest, highest), as for training below.
  --dtype picks the dtype of all three models' weights (bfloat16: cast, no autocast), and
  --gen_ref_dtype=float32 keeps the reference in float32 beside bf16 models. With the
  compiled step at batch 1 on a CPU, 'calm_compiled_ms' sets the whole step beside its parts compiled
  and timed apart.
  The CALM-only parts (compression, head, decoder) are a fixed cost per step, large beside a tiny
  backbone: compare config/tiny.py with config/gpu_small.py.
training:   tokens of text per second of a full training step (forward, backward, AdamW) for the
  reference, the baseline and CALM, in each of --train_dtypes (float32, or bf16 autocast) and eager
  and/or through torch.compile (--train_compile: auto = as train.py, on for CUDA; true; false; both).
  Rounds alternate the variants (--repeats rounds, the best of each kept), so the ratios compare
  runs made side by side; 'ratios_by_round' also gives each of those ratios round by round
  (median, lowest, highest over the rounds), the steadier figure on a machine whose load drifts
  (take --repeats=7 or more there); the first, untimed steps compile. Also the minor page faults
  per step (memory the OS maps afresh, e.g. after the allocator returned it), where the OS reports them.
profile:    torch.profiler (--profile=training, decoding or both): --train_steps float32 eager training
  steps of the reference and of the baseline; one compiled generate() of each model (--dtype weights,
  batch --gen_batch). For each, the top-5 ops by self CPU time (CUDA time on a GPU) and the self CPU
  time per step by class: BLAS matrix products (and their calls per step), attention, inductor's
  compiled kernels, dynamo's guard check before each compiled call ('TorchDynamo Cache Lookup'), other.
  On CPU the compiled step's wrapper is C++ and calls attention itself, unseen by the profiler, so
  there attention counts with the compiled kernels.
ablation:   where the baseline's training speed against the reference comes from: the training figures
  (eager, each of --train_dtypes) of the reference, the baseline, and the baseline with the
  reference's layers in place of the paper's Llama-style ones, one kind at a time and all three
  (LayerNorm for RMSNorm, learned positions for RoPE, a GELU MLP of width 4d for SwiGLU), each over
  the reference and over the baseline ('..._over_gpt_...'), by best times and round by round.
flops:      analytic FLOPs per token, inference and training, by part (calm_min/flops.py).
memory:     peak memory of energy_loss (forward + backward) at N samples, M targets, P positions,
  against a naive version that materialises the (N, M, P, l) difference tensor. On CPU each
  variant runs in a fresh subprocess and the figure is its peak resident memory (VmHWM, reset just
  before the call) minus its resident memory before the call.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import calm_min.backbone as backbone_module
from calm_min.backbone import cache_length
from calm_min.config import ConfigError, TrainConfig, help_text, parse_args
from calm_min.device import (autocast, compile_for_decoding, decode_cache_dtype, keep_freed_memory, pick_device,
                             resolve_dtype, use_compile)
from calm_min.energy_head import energy_loss
from train import build_model, make_optimizer


@dataclass
class BenchConfig:
    """The benchmark's own options; the model sizes come from a training preset and its flags."""
    what: str = 'all'              # all, generation, training, memory, flops, profile, ablation
    gen_batch: int = 1             # sequences generated at once
    gen_tokens: int = 256          # new tokens per sequence
    gen_compile: bool = True       # also time the compiled decoding step
    gen_cudagraphs: str = 'auto'   # also time that step replayed as a CUDA graph: auto (on CUDA), true, false
    gen_ref_dtype: str = ''        # the reference's weights in generation: float32, bfloat16 ('' = as --dtype)
    train_steps: int = 10          # training: timed steps per round (profile: steps profiled)
    train_dtypes: str = ''         # training: comma-separated float32 / bfloat16 ('' = the preset's --dtype)
    train_compile: str = 'auto'    # training: auto (as train.py), true, false, both
    positions: int = 4096          # memory: P positions (e.g. 16 sequences x 256 chunk positions)
    mem_variant: str = ''          # internal: run one memory variant in this process
    repeats: int = 3               # rounds per variant (the variants alternate; the best is kept)
    profile: str = 'both'          # profile: training (float32 eager), decoding (compiled), both

    def validate(self):
        if self.what not in ('all', 'generation', 'training', 'memory', 'flops', 'profile', 'ablation'):
            raise ConfigError("--what must be all, generation, training, memory, flops, profile or ablation; "
                              f"got {self.what!r}")
        if self.profile not in ('training', 'decoding', 'both'):
            raise ConfigError(f"--profile must be training, decoding or both; got {self.profile!r}")
        if self.gen_cudagraphs not in ('auto', 'true', 'false'):
            raise ConfigError(f"--gen_cudagraphs must be auto, true or false; got {self.gen_cudagraphs!r}")
        if self.gen_ref_dtype not in ('', 'float32', 'bfloat16'):
            raise ConfigError(f"--gen_ref_dtype must be float32 or bfloat16 (or left out: as --dtype); "
                              f"got {self.gen_ref_dtype!r}")
        if self.train_compile not in ('auto', 'true', 'false', 'both'):
            raise ConfigError(f"--train_compile must be auto, true, false or both; got {self.train_compile!r}")
        if self.what == 'ablation' and self.train_compile in ('true', 'both'):
            raise ConfigError("--what=ablation times eager steps only; drop --train_compile (the ablation's RoPE "
                              "switch works on the eager backbone)")
        for d in filter(None, self.train_dtypes.split(',')):
            if d not in ('float32', 'bfloat16', 'auto'):
                raise ConfigError(f"--train_dtypes takes float32, bfloat16 or auto, comma-separated; got {d!r}")
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


class Reference(nn.Module):
    """A GPT-2-style language model in the manner of nanoGPT, the yardstick of this benchmark (written
    here, a few dozen lines): learned positions, pre-LayerNorm blocks with biases, causal SDPA, a GELU
    MLP of width 4d, a tied LM head; `generate` recomputes the whole window every step (no KV cache)."""
    tokens_per_step = 1

    def __init__(self, vocab_size: int, n_layer: int, n_head: int, n_embd: int, block_size: int):
        super().__init__()
        self.n_head, self.block_size = n_head, block_size
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            'ln1': nn.LayerNorm(n_embd), 'qkv': nn.Linear(n_embd, 3 * n_embd), 'proj': nn.Linear(n_embd, n_embd),
            'ln2': nn.LayerNorm(n_embd), 'fc': nn.Linear(n_embd, 4 * n_embd), 'out': nn.Linear(4 * n_embd, n_embd),
        }) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    @staticmethod
    def train_window(block_size: int) -> int:
        return block_size + 1

    def forward(self, x, targets=None, generator=None):
        B, T = x.shape
        h = self.tok(x) + self.pos(torch.arange(T, device=x.device))                 # (B, T, d)
        for b in self.blocks:
            q, k, v = b['qkv'](b['ln1'](h)).view(B, T, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + b['proj'](y.transpose(1, 2).reshape(B, T, -1))
            h = h + b['out'](F.gelu(b['fc'](b['ln2'](h))))
        logits = self.ln_f(h) @ self.tok.weight.T                                     # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens, generator=None, **_):
        x = prompt
        for _ in range(max_new_tokens):
            logits, _ = self(x[:, -self.block_size:])
            probs = F.softmax(logits[:, -1].float(), -1)
            x = torch.cat([x, torch.multinomial(probs, 1, generator=generator)], 1)
        return x


def models(cfg, device):
    """A baseline, a CALM (the AE built in place) and the reference with the preset's sizes (random
    weights, the same in every run: seed 0)."""
    torch.manual_seed(0)
    gpt = build_model(dataclasses.replace(cfg, model='gpt'), cfg.vocab_size, 0)
    ae = build_model(dataclasses.replace(cfg, model='ae'), cfg.vocab_size, 0)
    calm = build_model(dataclasses.replace(cfg, model='calm'), cfg.vocab_size, 0, ae=ae)
    torch.nn.init.normal_(calm.head.final_out.weight, std=0.02)  # a head that varies, as after training
    ref = Reference(cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size + 1)
    return gpt.to(device).eval(), calm.to(device).eval(), ref.to(device).eval()


def params_read_per_step(gpt, calm) -> dict:
    """Parameters each generation step multiplies with (embedding rows that are only gathered do not
    count; a tied output projection does). At batch 1 a step is bound by reading these weights from
    memory, so K * gpt / calm_total is the speedup that a perfect implementation would reach there."""
    n = lambda *mods: sum(p.numel() for m in mods for p in m.parameters())
    ae = calm.ae
    parts = {'backbone': n(calm.backbone), 'compress': n(calm.compress), 'head': n(calm.head),
             'decoder': n(ae.dec_in, ae.dec_chunk, ae.dec_expand, ae.dec_tok, ae.dec_norm) + ae.emb.weight.numel()}
    return {'gpt': n(gpt.backbone) + gpt.tok_emb.weight.numel(), 'calm': sum(parts.values()), 'calm_parts': parts}


def weight_read_ms(n_params: int, dtype: torch.dtype, device, rounds: int = 100) -> float:
    """Milliseconds to read n_params weights of `dtype` once (their bytes as one contiguous float32 buffer,
    summed over and over, best of `rounds`): what reading a step's weights costs on this machine
    when they stay in whatever cache holds them. The parameter-count bound charges every byte the same;
    the ratio of two models' figures here is the same bound measured, caches included."""
    x = torch.ones(n_params * dtype.itemsize // 4, device=device)                 # the bytes, as float32
    best = float('inf')
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        x.sum()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def seconds(fn, device, seed: int) -> float:
    """Wall time of fn(generator) on `device`."""
    sync(device)
    t0 = time.perf_counter()
    fn(torch.Generator(device=device).manual_seed(seed))
    sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def bench_generation(bench, cfg, device, gpt, calm, ref):
    B, n, K = bench.gen_batch, bench.gen_tokens, cfg.chunk_size
    prompt = torch.zeros(B, K, dtype=torch.long, device=device)
    dtype = resolve_dtype(device, cfg.dtype)       # --dtype: the models' weights in this dtype
    ref_dtype = resolve_dtype(device, bench.gen_ref_dtype) if bench.gen_ref_dtype else dtype  # and the reference's
    if dtype != torch.float32:
        gpt, calm = (copy.deepcopy(m).to(dtype) for m in (gpt, calm))
    if ref_dtype != torch.float32:
        ref = copy.deepcopy(ref).to(ref_dtype)
    runs = {'reference_nocache': lambda g: ref.generate(prompt, n, generator=g),
            'gpt': lambda g: gpt.generate(prompt, n, generator=g),
            'calm': lambda g: calm.generate(prompt, n, generator=g)}
    if bench.gen_compile:
        runs.update(gpt_compiled=lambda g: gpt.generate(prompt, n, generator=g, compile=True),
                    calm_compiled=lambda g: calm.generate(prompt, n, generator=g, compile=True))
    graphs = bench.gen_compile and (bench.gen_cudagraphs == 'true' or (bench.gen_cudagraphs == 'auto'
                                                                      and device.type == 'cuda'))
    if graphs:
        runs.update(gpt_cudagraphs=lambda g: gpt.generate(prompt, n, generator=g, compile='cudagraphs'),
                    calm_cudagraphs=lambda g: calm.generate(prompt, n, generator=g, compile='cudagraphs'))
    res = {'dtype': str(dtype).removeprefix('torch.'),
           'reference_dtype': str(next(ref.parameters()).dtype).removeprefix('torch.')}
    for fn in runs.values():                                      # warm-up (and compilation), untimed
        fn(torch.Generator(device=device).manual_seed(0))
    rounds = {name: [] for name in runs}
    for r in range(bench.repeats):                                 # rounds alternate the variants
        for name, fn in runs.items():
            rounds[name].append(seconds(fn, device, r))
    best = {name: min(t) for name, t in rounds.items()}
    w = params_read_per_step(gpt, calm)
    read_ms = {m: weight_read_ms(w[m], dtype, device) for m in ('gpt', 'calm')}
    res['seconds'] = best                                          # each variant's best, for B x n tokens
    res.update(generation_figures(best, B * n, K, w, read_ms, rounds))
    if bench.gen_compile and B == 1 and device.type == 'cpu':   # the weight-read question: batch 1, on a
        res['calm_compiled_ms'] = compiled_parts_apart(calm, B, device, bench.repeats)  # CPU's caches (5 compilations)
    # where CALM's time goes: one eager generate() with a timer around each part it calls (instance
    # wrappers, removed afterwards; the model's own loop runs unchanged)
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
    calm.hidden, calm.head.transform, calm.ae.decode = (timed('backbone', calm.hidden),
                                                        timed('head', calm.head.transform),
                                                        timed('decoder', calm.ae.decode))
    try:
        calm.generate(prompt, n, generator=torch.Generator(device=device).manual_seed(0))
    finally:
        del calm.hidden, calm.head.transform, calm.ae.decode
    total = sum(parts.values())
    res['calm_time_share'] = {k: round(v / total, 3) for k, v in parts.items()}
    return res


def generation_figures(best: dict, tokens: int, K: int, w: dict, read_ms: dict,
                       rounds: dict | None = None) -> dict:
    """bench_generation's figures from the best seconds of each variant ('reference_nocache', 'gpt',
    'calm', and where timed '{gpt,calm}_compiled' and '{gpt,calm}_cudagraphs') for `tokens` generated
    tokens (batch x new tokens): tokens/s, speedups over the no-cache reference, CALM's speedup over
    the baseline, and that speedup against the weight-read bounds (`params_read_per_step` counts
    `w`, `weight_read_ms` times `read_ms`). All a ratio of times measured in the same run. With
    `rounds` (each variant's seconds in every round), 'ratios_by_round' gives the speedups over the
    reference and CALM's over the baseline round by round (median, lowest, highest): at the tiny sizes
    on a CPU a compiled run lasts a tenth of a second and the reference's seconds, so on a machine whose
    load comes and goes the best of a few short runs can catch a quiet moment that no run of the
    reference does."""
    res = {f'{name}_tokens_per_s': tokens / t for name, t in best.items()}
    res.update({f'{name}_over_reference': best['reference_nocache'] / t for name, t in best.items()
                if name != 'reference_nocache'})
    res['speedup'] = best['gpt'] / best['calm']                   # CALM over the baseline, eager
    res['params_read_per_step'] = w
    res['weight_bound_speedup'] = K * w['gpt'] / w['calm']
    res['weight_read_ms'] = read_ms
    res['measured_weight_bound_speedup'] = K * read_ms['gpt'] / read_ms['calm']
    if 'calm_compiled' in best:
        res['speedup_compiled'] = best['gpt_compiled'] / best['calm_compiled']
        res['compiled_fraction_of_weight_bound'] = res['speedup_compiled'] / res['weight_bound_speedup']
        res['compiled_fraction_of_measured_weight_bound'] = (res['speedup_compiled']
                                                             / res['measured_weight_bound_speedup'])
    if 'calm_cudagraphs' in best:
        res['speedup_cudagraphs'] = best['gpt_cudagraphs'] / best['calm_cudagraphs']
        res['cudagraphs_over_compiled'] = {m: best[f'{m}_compiled'] / best[f'{m}_cudagraphs']
                                           for m in ('gpt', 'calm')}
    if rounds:
        pairs = {f'{name}_over_reference': (name, 'reference_nocache') for name in best if name != 'reference_nocache'}
        pairs['speedup'] = ('calm', 'gpt')
        for how in ('compiled', 'cudagraphs'):
            if f'calm_{how}' in best:
                pairs[f'speedup_{how}'] = (f'calm_{how}', f'gpt_{how}')
        res['ratios_by_round'] = {name: by_round(rounds[ref], rounds[k]) for name, (k, ref) in pairs.items()}
    return res


def by_round(ref: list, variant: list) -> dict:
    """The ratio ref / variant of each round's seconds: median, lowest, highest, and how many rounds."""
    r = [a / b for a, b in zip(ref, variant, strict=True)]
    return {'median': statistics.median(r), 'lowest': min(r), 'highest': max(r), 'rounds': len(r)}


def compiled_parts_apart(calm, B: int, device, rounds: int) -> dict:
    """ms per call of CALM's compiled decoding step ('step') and of its parts, each compiled apart and
    called 64 times in a row ('compress', 'backbone', 'head', 'decoder'; median over rounds). Called
    alone and over and over, a part keeps its weights in the CPU's caches; the whole step reads all
    of CALM's weights once per call. 'parts_sum' > 'step' would mean compiling as one graph costs
    time; 'step' > 'parts_sum' means the step pays for reading weights that no longer fit in cache."""
    comp = lambda fn: compile_for_decoding(fn, device)
    dtype = calm.tok_emb.weight.dtype
    cache = calm.backbone.make_cache(B, cache_length(65), device, decode_cache_dtype(device, dtype), static=True)
    chunk = torch.zeros(B, calm.chunk_size, dtype=torch.long, device=device)                 # (B, K)
    h = torch.zeros(B, calm.backbone.cfg.n_embd, dtype=dtype, device=device)                 # (B, d)
    eps = calm.head.noise(h, 1, torch.Generator(device=device).manual_seed(0))               # (1, B, noise)
    fns = {'step': (comp(calm.decode_step), (chunk, cache, eps)),
           'compress': (comp(calm.embed), (chunk[:, None],)),
           'backbone': (comp(lambda e, c: calm.backbone(e, c)), (calm.embed(chunk[:, None]), cache)),
           'head': (comp(calm.head.transform), (h, eps)),
           'decoder': (comp(calm.ae.decode), (calm.head.transform(h, eps),))}

    def ms(f, args):
        cache.pos.zero_()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(64):
            f(*args)
        sync(device)
        return (time.perf_counter() - t0) / 64 * 1e3
    for f, args in fns.values():                                  # compile, untimed
        ms(f, args)
    times = {name: [ms(f, args) for _ in range(rounds)] for name, (f, args) in fns.items()}
    out = {name: round(statistics.median(t), 3) for name, t in times.items()}
    out['parts_sum'] = round(sum(v for k, v in out.items() if k != 'step'), 3)
    return out


def bench_flops(cfg, gpt, calm) -> dict:
    """Analytic FLOPs per token at a full context (calm_min/flops.py): inference and training, by part."""
    ctx = cfg.block_size // cfg.chunk_size * cfg.chunk_size
    g, c = gpt.flops_per_token(ctx), calm.flops_per_token(ctx)
    return {'context_tokens': ctx, 'gpt': g, 'calm': c, 'calm_over_gpt_inference': c['inference'] / g['inference'],
            'calm_over_gpt_training': c['training'] / g['training']}


def bench_training(bench, cfg, device, gpt, calm, ref):
    """Training tokens/s of every (model, dtype, compile) variant, rounds alternating the variants."""
    dtypes = [d for d in bench.train_dtypes.split(',') if d] or [cfg.dtype]
    compiles = {'auto': [use_compile(cfg.compile, device)], 'true': [True], 'false': [False],
                'both': [False, True]}[bench.train_compile]
    g = torch.Generator().manual_seed(0)
    steps = {}
    for dtype in dtypes:
        for comp in compiles:
            for name, model in (('reference', ref), ('gpt', gpt), ('calm', calm)):
                steps[f"{name}_{dtype}{'_compiled' if comp else ''}"] = _train_step(cfg, device, model, dtype, comp, g)
    rounds, faults = timed_rounds(steps, bench, device)
    best = {k: min(v) for k, v in rounds.items()}
    res = training_figures(best, {k: step.tokens for k, step in steps.items()}, rounds)
    res['seconds_per_step'] = best
    if minor_page_faults():      # how often a step touched memory the OS had to map afresh (median over rounds)
        res['minor_page_faults_per_step'] = {k: round(statistics.median(v)) for k, v in faults.items()}
    for m in (gpt, calm, ref):
        m.eval()
    return res


def timed_rounds(steps: dict, bench, device) -> tuple[dict, dict]:
    """Two untimed steps of each variant (compilation, warm-up), then --repeats rounds, each timing
    --train_steps steps of every variant in turn -> (seconds per step, minor page faults per step), each
    variant's list holding one figure per round."""
    for step in steps.values():
        for _ in range(2):
            step()
    rounds = {k: [] for k in steps}
    faults = {k: [] for k in steps}
    for _ in range(bench.repeats):
        for k, step in steps.items():
            sync(device)
            f0, t0 = minor_page_faults(), time.perf_counter()
            for _ in range(bench.train_steps):
                step()
            sync(device)
            rounds[k].append((time.perf_counter() - t0) / bench.train_steps)
            faults[k].append((minor_page_faults() - f0) / bench.train_steps)
    return rounds, faults


def training_figures(best: dict, tokens: dict, rounds: dict | None = None, also_over: str = '') -> dict:
    """bench_training's figures from the best seconds per step of each variant ('{model}_{dtype}' with
    '_compiled' where compiled, in the order timed, a reference first) and the tokens of text a step of
    each trains on: tokens/s; each model's speedup over the reference of the same dtype and compile
    setting; every variant's over the first reference timed. With `rounds` (each variant's seconds per
    step in every round), also each of those speedups round by round: their median, lowest and
    highest. A round's two timings lie a few seconds apart, so a machine whose load drifts moves
    both, and the median of many rounds is steadier than the ratio of two best times. With `also_over`
    (a variant), every other variant but a reference is also set over that one."""
    pairs = {}                                       # ratio name -> (variant, the reference it is measured against)
    base = next(k for k in best if k.startswith('reference'))
    for k in best:
        if not k.startswith('reference'):
            same = 'reference_' + k.split('_', 1)[1]
            pairs[f'{k}_over_{same}'] = (k, same)
        if k != base:
            pairs[f'{k}_over_{base}'] = (k, base)
        if also_over and k != also_over and not k.startswith('reference'):
            pairs[f'{k}_over_{also_over}'] = (k, also_over)
    out = {'train_tokens_per_s': {k: tokens[k] / t for k, t in best.items()},
           'ratios': {name: best[ref] / best[k] for name, (k, ref) in pairs.items()}}
    if rounds:
        out['ratios_by_round'] = {name: by_round(rounds[ref], rounds[k]) for name, (k, ref) in pairs.items()}
    return out


# The ablation: the baseline with the reference's layers in place of the paper's (Llama-style) ones.
ABLATIONS = {'layernorm': ('norm',),                  # LayerNorm (with bias) for every RMSNorm
             'learned-positions': ('positions',),     # learned absolute positions at the input, no RoPE
             'gelu-mlp': ('mlp',),                    # a GELU MLP of width 4d (with biases) for SwiGLU
             'gpt2-layers': ('norm', 'positions', 'mlp')}


class _LearnedPositions(nn.Module):
    """The token embedding plus a learned position table, as the reference's input; `weight` stays the
    token table, so the baseline's tied LM head reads it as before."""

    def __init__(self, tok: nn.Embedding, n_positions: int):
        super().__init__()
        self.tok, self.pos = tok, nn.Embedding(n_positions, tok.embedding_dim)
        nn.init.normal_(self.pos.weight, std=0.02)

    @property
    def weight(self):
        return self.tok.weight

    def forward(self, x):
        return self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))         # (B, T, d)


def ablated(gpt, swaps: tuple, n_positions: int):
    """A copy of the baseline, on its device, with the layers named in `swaps` replaced by the reference's
    (ABLATIONS); with learned positions, its backbone runs without RoPE (a wrapped `forward`, which a
    further deepcopy would share: ablate the baseline again instead)."""
    m = copy.deepcopy(gpt)
    d = m.cfg.backbone.n_embd
    for blk in m.backbone.blocks:
        if 'norm' in swaps:
            blk.attn_norm, blk.mlp.norm = nn.LayerNorm(d), nn.LayerNorm(d)
        if 'mlp' in swaps:
            blk.mlp.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            for lin in (blk.mlp.mlp[0], blk.mlp.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)
    if 'norm' in swaps:
        m.backbone.norm = nn.LayerNorm(d)
    if 'positions' in swaps:
        m.tok_emb = _LearnedPositions(m.tok_emb, n_positions)
        m.backbone.forward = rope_off()(m.backbone.forward)
    return m.to(next(gpt.parameters()).device)


@contextlib.contextmanager
def rope_off():
    """Attention without rotary embeddings: the backbone's `rope` is the identity inside this block
    (the autograd graph then holds no rotation either); `rope_off()(f)` runs f so."""
    saved = backbone_module.rope
    backbone_module.rope = lambda x, cos, sin: x
    try:
        yield
    finally:
        backbone_module.rope = saved


def bench_ablation(bench, cfg, device, gpt, ref):
    """Where the baseline's training speed against the reference comes from: the reference, the
    baseline and the baseline with each of the paper's layers swapped for the reference's (ABLATIONS),
    eager, in each of --train_dtypes, timed in alternating rounds as bench_training times them. Each
    variant is set over the reference and over the baseline, by best times and round by round."""
    dtypes = [d for d in bench.train_dtypes.split(',') if d] or [cfg.dtype]
    g = torch.Generator().manual_seed(0)
    variants = {'gpt': gpt} | {f'gpt-{name}': ablated(gpt, swaps, gpt.train_window(cfg.block_size))
                               for name, swaps in ABLATIONS.items()}
    steps, res = {}, {'params': {name: sum(p.numel() for p in m.parameters()) for name, m in variants.items()}}
    for dtype in dtypes:
        steps[f'reference_{dtype}'] = _train_step(cfg, device, ref, dtype, False, g)
        for name, m in variants.items():
            steps[f'{name}_{dtype}'] = _train_step(cfg, device, m, dtype, False, g)
    rounds, _ = timed_rounds(steps, bench, device)
    for dtype in dtypes:
        mine = {k: v for k, v in rounds.items() if k.endswith('_' + dtype)}
        res[dtype] = training_figures({k: min(v) for k, v in mine.items()}, {k: steps[k].tokens for k in mine},
                                      mine, also_over=f'gpt_{dtype}')
        print(ablation_table(res[dtype], dtype), file=sys.stderr)
    for m in (gpt, ref):
        m.eval()
    return res


def ablation_table(r: dict, dtype: str) -> str:
    """One line per variant: tokens/s, and its ratio over the reference and over the baseline in the
    median round (the lowest and highest rounds in brackets)."""
    q = r['ratios_by_round']                        # (not the by_round function above)
    cell = lambda name: (f"{q[name]['median']:.3f} [{q[name]['lowest']:.3f}, "
                         f"{q[name]['highest']:.3f}]" if name in q else '1')
    ref, base = f'reference_{dtype}', f'gpt_{dtype}'
    lines = [f"ablation, {dtype}: tokens/s | x reference | x baseline (median round [lowest, highest])"]
    for k, tps in r['train_tokens_per_s'].items():
        lines.append(f"{k.removesuffix('_' + dtype):24s} {tps:8.0f} | {cell(f'{k}_over_{ref}')} | "
                     f"{cell(f'{k}_over_{base}') if k != ref else '-'}")
    return '\n'.join(lines)


def minor_page_faults() -> int:
    """This process's minor page faults so far (0 where the OS does not say: no `resource` module)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _train_step(cfg, device, model, dtype, compile_on, g):
    """A closure running one training step of `model` (forward, backward, AdamW) on random tokens;
    its `tokens` attribute is the tokens of text one step trains on. Each closure keeps its own optimizer."""
    model.train()
    opt = make_optimizer(model, cfg, cfg.lr, device)
    gm = torch.Generator(device=device).manual_seed(0)
    fwd = torch.compile(model) if compile_on else model
    amp = autocast(device, dtype)
    s, window = model.tokens_per_step, model.train_window(cfg.block_size)
    T = cfg.block_size // s * s                                  # tokens of text per example (as train.py counts)

    def step():
        w = torch.randint(cfg.vocab_size, (cfg.batch_size, window), generator=g).to(device)
        with amp:
            _, loss = fwd(w[:, :-s], w[:, s:], generator=gm)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step.tokens = cfg.batch_size * T
    return step


def op_class(name: str) -> str:
    """The class of a profiled op: a BLAS matrix product, attention, a graph that inductor compiled, dynamo's
    guard check before each compiled call, or anything else."""
    if name in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm'):
        return 'matmul'
    if 'scaled_dot_product' in name:
        return 'attention'
    if name.startswith('## Call CompiledFxGraph'):
        return 'compiled_kernels'
    if name == 'TorchDynamo Cache Lookup':
        return 'guard_check'
    return 'other'


def profiled(run, n: int, device, top: int = 5) -> dict:
    """Profile run() (n steps of work): the top ops by self time as a table, and the self CPU time per
    step (ms) by `op_class`, with the BLAS matrix-product calls per step."""
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=acts) as prof:
        run()
        sync(device)
    events = prof.key_averages()
    key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    per_step = {c: 0.0 for c in ('matmul', 'attention', 'compiled_kernels', 'guard_check', 'other')}
    mm_calls = 0
    for e in events:
        c = op_class(e.key)
        per_step[c] += e.self_cpu_time_total / 1e3 / n            # us -> ms per step
        mm_calls += e.count if c == 'matmul' else 0
    per_step = {c: round(v, 3) for c, v in per_step.items() if v > 0}
    per_step['total'] = round(sum(per_step.values()), 3)
    return {'sort_by': key, 'steps': n, 'self_cpu_ms_per_step': per_step, 'matmul_calls_per_step': mm_calls / n,
            'table': events.table(sort_by=key, row_limit=top, max_name_column_width=40)}


def bench_profile(bench, cfg, device, gpt, calm, ref) -> dict:
    """torch.profiler. 'training': --train_steps float32 eager training steps of the reference, then of
    the baseline. 'decoding': one generate(compile=True) of --gen_tokens at batch --gen_batch, weights
    in --dtype, for the baseline and CALM, per decoding step (after a warm-up call that compiles)."""
    out = {}
    if bench.profile in ('training', 'both'):
        out['training'] = {}
        for name, model in (('reference', ref), ('gpt', gpt)):
            step = _train_step(cfg, device, model, 'float32', False, torch.Generator().manual_seed(0))
            step()                                                 # warm-up, unprofiled

            def run():
                for _ in range(bench.train_steps):
                    step()
            out['training'][name] = show('training', name, profiled(run, bench.train_steps, device))
            model.eval()
    if bench.profile in ('decoding', 'both'):
        out['decoding'] = {}
        B, n = bench.gen_batch, bench.gen_tokens
        dtype = resolve_dtype(device, cfg.dtype)
        for name, model in (('gpt', gpt), ('calm', calm)):
            model = copy.deepcopy(model).to(dtype) if dtype != torch.float32 else model
            prompt = torch.zeros(B, cfg.chunk_size, dtype=torch.long, device=device)
            gen = lambda: model.generate(prompt, n, generator=torch.Generator(device=device).manual_seed(0), compile=True)
            with torch.no_grad():
                gen()                                              # compiles, unprofiled
                out['decoding'][name] = show('decoding', name, profiled(gen, -(-n // model.tokens_per_step), device))
        out['decoding']['dtype'] = str(dtype).removeprefix('torch.')
    return out


def show(part: str, name: str, r: dict) -> dict:
    """Print a profile's figures and table to stderr (stdout stays the JSON report); returns it."""
    print(f"{part}, {name}: {r['self_cpu_ms_per_step']} ms per step\n{r['table']}", file=sys.stderr)
    return r


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
    threads = torch.get_num_threads()
    kept = keep_freed_memory(device)                                  # CPU: as train.py runs
    report = {'device': str(device), 'threads': threads, 'torch': torch.__version__, 'keeps_freed_memory': kept,
              'sizes': {k: getattr(cfg, k) for k in ('vocab_size', 'n_layer', 'n_embd', 'chunk_size', 'latent_size',
                                                      'ae_dim', 'head_blocks', 'block_size', 'batch_size')}}
    gpt, calm, ref = models(cfg, device)
    report['params'] = {'gpt': sum(p.numel() for p in gpt.parameters()),
                        'reference': sum(p.numel() for p in ref.parameters())}
    if bench.what == 'profile':
        report['profile'] = bench_profile(bench, cfg, device, gpt, calm, ref)
    if bench.what in ('all', 'generation'):
        report['generation'] = bench_generation(bench, cfg, device, gpt, calm, ref)
        report['generation'].update(batch=bench.gen_batch, new_tokens=bench.gen_tokens)
    if bench.what in ('all', 'flops'):
        report['flops'] = bench_flops(cfg, gpt, calm)
    if bench.what in ('all', 'training'):
        report['training'] = bench_training(bench, cfg, device, gpt, calm, ref)
    if bench.what == 'ablation':
        report['ablation'] = bench_ablation(bench, cfg, device, gpt, ref)
    if bench.what in ('all', 'memory'):
        report['memory'] = bench_memory(bench, cfg, device, [a for a in argv if not a.startswith('--what')])
    print(json.dumps(report, indent=1))
    return report


if __name__ == '__main__':
    try:
        main(*parse_bench_args(sys.argv[1:]), sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"error: {e}")
