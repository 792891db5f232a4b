"""Typed configuration and the small `--key=value` command-line parser.

Every script has one flat dataclass (`TrainConfig`, `SampleConfig`, `EvalConfig`). Its values come,
in order, from the dataclass defaults, then from preset files (`config/*.py`: plain assignments such
as `n_layer = 4`), then from `--key=value` flags, wherever on the command line each stands. A preset
is executed as Python (as in nanoGPT): run only presets you trust. Unknown keys are refused with the list of valid
ones, values are coerced to the field's type (an int is accepted for a float), and `validate()`
checks ranges, so a bad flag fails at once with a message instead of deep inside torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import io
from dataclasses import dataclass, fields
from pathlib import Path
import math
import os
import sys
import textwrap
import tokenize
from typing import get_type_hints

from .autoencoder import AEConfig
from .backbone import BackboneConfig
from .calm import CALMConfig
from .gpt import GPTConfig
from .sampling import Sampler


class ConfigError(ValueError):
    """A flag, preset or value the user must fix; the message says how."""


# ----------------------------------------------------------------------------------------------
# parsing


def _coerce(name: str, text: str, typ: type):
    if typ is bool:
        low = text.lower()
        if low in ('1', 'true', 'yes', 'on'):
            return True
        if low in ('0', 'false', 'no', 'off'):
            return False
        raise ConfigError(f"--{name} expects a boolean (true/false), got {text!r}")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--{name} expects an integer, got {text!r}") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--{name} expects a number, got {text!r}") from None
    return text


def _check_value(name: str, value, typ: type):
    """Values from preset files are Python objects: accept int for float, nothing else loose."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if typ is float and not isinstance(value, float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if typ is str and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ''
    return ConfigError(f"unknown option --{key}{hint}. Valid options: " + ', '.join(sorted(valid)))


def parse_args(argv: list[str], cls):
    """Build a `cls` config from preset files and `--key=value` flags, then validate it. The flags a
    class names in `path_fields` (files or folders, some comma-separated) have a leading ~ expanded."""
    hints = get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    values: dict = {}
    if '-h' in argv or '--help' in argv:
        print(help_text(cls))
        raise SystemExit(0)
    flags = {}
    for arg in [a for a in argv if a.startswith('--')]:
        key, eq, text = arg[2:].partition('=')
        if not eq:
            raise ConfigError(f"flags are written --key=value, got {arg!r}")
        key = key.replace('-', '_')
        if key not in hints:
            raise _unknown(key, valid)
        if key in getattr(cls, 'path_fields', ()):            # '~' as a shell would have expanded it,
            text = ','.join(os.path.expanduser(t) for t in text.split(','))   # which it does not after '--key='
        flags[key] = _coerce(key, text, hints[key])
    for arg in [a for a in argv if not a.startswith('--')]:   # presets first, in order ...
        values.update(load_preset(os.path.expanduser(arg), cls))
    values.update(flags)                                      # ... then flags, wherever they stand
    cfg = cls(**values)
    cfg.validate()
    return cfg


def run_cli(main, cls, argv: list[str], errors: tuple) -> int:
    """A script's command line: parse argv into `cls` and call main. The errors a user can fix become
    one `error: ...` line on stderr and exit code 1, never a traceback; success is 0."""
    try:
        main(parse_args(argv, cls))
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def load_preset(path: str, cls) -> dict:
    """Run a preset file (plain `key = value` lines) and keep its assignments."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"preset file {path!r} not found (presets live in config/, e.g. config/tiny.py)")
    scope: dict = {}
    try:
        exec(compile(p.read_text(), str(p), 'exec'), {}, scope)
    except Exception as e:  # a syntax error in a preset is the user's to fix
        raise ConfigError(f"preset {path} could not be read: {e}") from None
    hints = get_type_hints(cls)
    out = {}
    for key, value in scope.items():
        if key.startswith('_') or isinstance(value, type(dataclasses)):
            continue
        if key not in hints:
            raise ConfigError(f"preset {path}: " + str(_unknown(key, list(hints))))
        out[key] = _check_value(key, value, hints[key])
    return out


def _field_comments(cls) -> tuple[dict, dict]:
    """The comments of a config class's source, which document its fields: {field: its end-of-line
    comment} and {field: the comment lines just above it (a group heading)}. Empty where the source
    cannot be read (e.g. a frozen build)."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (OSError, TypeError, tokenize.TokenError):
        return {}, {}
    names = {f.name for f in fields(cls)}
    first = {}                                   # line -> its first token (a field's name)
    comment = {}                                 # line -> (column, text) of its comment
    for t in toks:
        if t.type == tokenize.COMMENT:
            comment[t.start[0]] = (t.start[1], t.string.lstrip('#').strip())
        elif t.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL, tokenize.NEWLINE):
            first.setdefault(t.start[0], t)
    trailing, above, pending, last = {}, {}, [], None
    for line in sorted(set(first) | set(comment)):
        t = first.get(line)
        if t is None:                            # a comment on its own line: it goes on with the comment
            col, text = comment[line]            # of the line above when it starts in the same column,
            if last and line - 1 == last[1] and col == last[2]:   # else it heads the next field
                trailing[last[0]] += ' ' + text
                last = (last[0], line, col)
            else:
                pending.append(text)
                last = None
        elif t.type == tokenize.NAME and t.string in names:
            last = None
            if line in comment:
                trailing[t.string] = comment[line][1]
                last = (t.string, line, comment[line][0])
            if pending:
                above[t.string] = pending
            pending = []
        else:
            pending, last = [], None
    return trailing, above


def help_text(cls) -> str:
    """Every option with its default, under the class's group headings and with its comment."""
    lines = [f"options of {cls.__name__} (--key=value; preset files first, then flags, whatever their order).",
             "A preset (config/*.py) is Python code, run as nanoGPT runs its configs: run only presets you trust."]
    trailing, above = _field_comments(cls)
    for f in fields(cls):
        lines += [f"  # {c}" for c in above.get(f.name, [])]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f"  --{f.name}={default!r}"
        lines.append(f"{flag:<34} {trailing[f.name]}" if f.name in trailing else flag)
    return '\n'.join(lines)


def _positive(cfg, *names):
    for n in names:
        if getattr(cfg, n) <= 0:
            raise ConfigError(f"--{n} must be positive, got {getattr(cfg, n)}")


def _prob(cfg, *names):
    for n in names:
        v = getattr(cfg, n)
        if not (0.0 <= v < 1.0):
            raise ConfigError(f"--{n} must be in [0, 1), got {v}")


def _finite(cfg):
    """NaN and inf are refused for every number: they would train silently to NaN or turn a check off."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"--{f.name} must be a finite number, got {v}")


def _choice(cfg, name, options):
    if getattr(cfg, name) not in options:
        raise ConfigError(f"--{name} must be one of {', '.join(options)}; got {getattr(cfg, name)!r}")


# ----------------------------------------------------------------------------------------------
# the configs


@dataclass
class TrainConfig:
    path_fields = ('out_dir', 'dataset', 'tokenizer', 'data_dir', 'ae_ckpt')  # not an option: the flags naming paths
    # what to train: 'gpt' (discrete baseline), 'ae' (stage 1), 'calm' (stage 2)
    model: str = 'gpt'
    out_dir: str = 'out'               # checkpoints are {out_dir}/{model}.pt, logs {out_dir}/{model}.jsonl
    resume: bool = False               # continue {out_dir}/{model}.pt exactly where it stopped
    overwrite: bool = False            # allow replacing an existing checkpoint with a new run
    keep_checkpoints: bool = False     # also keep {out_dir}/{model}_{step}.pt at every evaluation
    seed: int = 1337                   # initialisation, batches and the model's noise
    device: str = 'auto'               # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
    dtype: str = 'auto'                # auto (bf16 autocast on CUDA and on CPUs with hardware bf16), float32, bfloat16
    compile: str = 'auto'              # auto (on for CUDA, off on CPU), true, false
    # data
    dataset: str = 'sotu'              # 'sotu' (bundled) or a .txt file, a folder of .txt, a .jsonl
    tokenizer: str = 'bpe'             # 'bpe' (trained on the train split), 'bytes', or a tokenizer.json
    vocab_size: int = 4096             # for 'bpe'
    data_dir: str = 'data_cache'       # where prepared .bin files go
    block_size: int = 256              # context in tokens (CALM: block_size // chunk_size positions)
    # backbone (shared by gpt and calm)
    n_layer: int = 4                   # Transformer layers
    n_head: int = 4                    # attention heads (n_embd / n_head: even)
    n_embd: int = 256                  # width d
    ffn_hidden: int = 0                # 0: about 8/3 n_embd, rounded to 64 (Llama)
    rope_theta: float = 10000.0        # RoPE's base
    # autoencoder (stage 1; docs/method.md section 2)
    chunk_size: int = 4                # K
    latent_size: int = 128             # l
    ae_dim: int = 512                  # the autoencoder's width d_ae
    ae_hidden: int = 1280              # SwiGLU width of its residual blocks
    ae_blocks: int = 1                 # residual blocks per stage
    token_dropout: float = 0.15        # share of input tokens replaced by end-of-text in AE training
    latent_dropout: float = 0.15       # dropout on z in AE training
    kl_clip: float = 0.5               # per-dimension KL floor; 0 turns clipping off
    kl_beta: float = 0.001             # weight of the clipped KL
    ae_ckpt: str = ''                  # calm: the frozen AE ('' = {out_dir}/ae.pt, trained first if missing)
    ae_max_iters: int = 2000           # used when --model=ae, or when calm trains its missing AE
    ae_batch_size: int = 512           # chunks per step
    ae_lr: float = 1e-3                # the AE stage's peak learning rate
    # energy head and loss (stage 2; docs/method.md section 4)
    head_blocks: int = 4               # residual blocks of the energy head
    noise_size: int = 64               # size of the head's uniform noise
    n_samples: int = 8                 # N model samples per position
    n_targets: int = 100               # M posterior draws per position
    alpha: float = 1.0                 # the energy score's exponent, in (0, 2]
    # extension beyond the paper (README, "Making CALM learn at small scale"); the default is the paper's
    aux_ce: float = 0.0                # weight of an auxiliary next-chunk token cross-entropy on h; 0: off
    # optimisation
    batch_size: int = 16               # sequences per micro-step
    grad_accum: int = 1                # micro-steps per optimizer step
    max_iters: int = 2000              # optimizer steps (the LM stage for calm)
    lr: float = 3e-4                   # peak learning rate, after warmup
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio
    lr_schedule: str = 'cosine'        # cosine or constant (after warmup)
    warmup_iters: int = 100            # linear warmup steps
    weight_decay: float = 0.1          # AdamW's, on matrices only
    beta1: float = 0.9                 # AdamW's betas
    beta2: float = 0.95
    grad_clip: float = 1.0             # 0 turns clipping off
    skip_nonfinite: int = 0            # steps with a NaN/inf loss or gradient to skip before the run stops
    # logging and evaluation
    log_interval: int = 25             # steps between log lines
    eval_interval: int = 250           # steps between evaluations and checkpoints
    eval_iters: int = 20               # validation batches per evaluation
    brier_blocks: int = 8              # blocks of validation text for BrierLM at each eval (0: off)
    num_samples: int = 2               # samples printed at the end of training (0: none)
    sample_tokens: int = 64            # new tokens per sample printed at the end

    def validate(self):
        _finite(self)
        _choice(self, 'model', ('gpt', 'ae', 'calm'))
        _choice(self, 'lr_schedule', ('cosine', 'constant'))
        _choice(self, 'compile', ('auto', 'true', 'false'))
        _choice(self, 'dtype', ('auto', 'float32', 'bfloat16'))
        _positive(self, 'vocab_size', 'block_size', 'n_layer', 'n_head', 'n_embd', 'chunk_size',
                  'latent_size', 'ae_dim', 'ae_hidden', 'ae_blocks', 'ae_max_iters', 'ae_batch_size',
                  'ae_lr', 'head_blocks', 'noise_size', 'n_targets', 'batch_size', 'grad_accum',
                  'max_iters', 'lr', 'rope_theta', 'log_interval', 'eval_interval', 'eval_iters')
        _prob(self, 'token_dropout', 'latent_dropout', 'beta1', 'beta2')
        if self.min_lr_ratio > 1:
            raise ConfigError(f"--min_lr_ratio must be in [0, 1] (the cosine's floor as a share of --lr), got {self.min_lr_ratio}")
        for n in ('weight_decay', 'grad_clip', 'min_lr_ratio', 'warmup_iters', 'kl_clip', 'kl_beta', 'ffn_hidden',
                  'brier_blocks', 'num_samples', 'sample_tokens', 'skip_nonfinite'):
            if getattr(self, n) < 0:
                raise ConfigError(f"--{n} must be >= 0, got {getattr(self, n)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"--n_embd={self.n_embd} must be divisible by --n_head={self.n_head} "
                              f"into an even head size (RoPE rotates pairs)")
        if self.n_samples < 2:
            raise ConfigError(f"--n_samples must be >= 2 (the energy loss's diversity term needs two "
                              f"samples), got {self.n_samples}")
        if self.aux_ce < 0:
            raise ConfigError(f"--aux_ce must be >= 0 (0 turns the auxiliary loss off), got {self.aux_ce}")
        if not (0 < self.alpha <= 2):
            raise ConfigError(f"--alpha must be in (0, 2], got {self.alpha}")
        need = (1 + -(-4 // self.chunk_size)) * self.chunk_size   # a chunk of context + whole chunks holding 4 tokens
        if self.model == 'calm' and self.block_size < need:
            raise ConfigError(f"--block_size={self.block_size} is too short for CALM with --chunk_size="
                              f"{self.chunk_size}: BrierLM needs one chunk of context and 4 tokens after it; "
                              f"use --block_size >= {need}")
        if self.tokenizer == 'bpe' and self.vocab_size < 260:
            raise ConfigError(f"--vocab_size must be >= 260 for a byte-level BPE, got {self.vocab_size}")
        for n in ('out_dir', 'data_dir', 'dataset', 'tokenizer'):
            if not getattr(self, n).strip():
                raise ConfigError(f"--{n} must not be empty")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: choose one")

    # -- the model configs these flags describe (keyword arguments: names may differ) --------------

    def backbone_config(self) -> BackboneConfig:
        return BackboneConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                              ffn_hidden=self.ffn_hidden, rope_theta=self.rope_theta)

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, backbone=self.backbone_config())

    def ae_config(self, vocab_size: int, mask_id: int) -> AEConfig:
        return AEConfig(vocab_size=vocab_size, chunk_size=self.chunk_size, latent_size=self.latent_size,
                        dim=self.ae_dim, hidden=self.ae_hidden, n_blocks=self.ae_blocks,
                        token_dropout=self.token_dropout, latent_dropout=self.latent_dropout,
                        kl_clip=self.kl_clip, kl_beta=self.kl_beta, mask_id=mask_id)

    def calm_config(self) -> CALMConfig:
        """K, l and the vocabulary are not here: CALM takes them from its autoencoder."""
        return CALMConfig(backbone=self.backbone_config(), head_blocks=self.head_blocks,
                          noise_size=self.noise_size, n_samples=self.n_samples, n_targets=self.n_targets,
                          alpha=self.alpha, aux_ce=self.aux_ce)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.out_dir) / f"{self.model}.pt"

    @property
    def ae_ckpt_path(self) -> Path:
        return Path(self.ae_ckpt) if self.ae_ckpt else Path(self.out_dir) / 'ae.pt'


@dataclass
class SampleConfig:
    path_fields = ('ckpt',)  # not an option: the flags naming paths
    ckpt: str = 'out/calm.pt'          # a CALM or baseline checkpoint
    prompt: str = '\n'                 # text, or FILE:path to read the prompt from a file
    max_new_tokens: int = 128          # per sample (CALM draws whole chunks and cuts the last)
    num_samples: int = 2
    temperature: float = 1.0           # > 0; CALM: <= 1, below 1 by the likelihood-free samplers
    top_k: int = 0                     # gpt only; 0: off
    sampler: str = 'batch'             # calm with temperature < 1: 'batch' (Algorithm 2) or 'exact' (Algorithm 1)
    num_candidates: int = 200          # calm 'batch' sampler pool size N
    max_draws: int = 100000            # calm 'exact' sampler: bound on draws per chunk
    seed: int = 1337
    device: str = 'auto'
    compile: str = 'auto'              # the decoding step as one compiled graph: auto (on for CUDA), true, false
    dtype: str = 'float32'             # the weights while sampling: float32, bfloat16 (cast), auto (bf16 where fast)

    def validate(self):
        _finite(self)
        _positive(self, 'max_new_tokens', 'num_samples')
        _choice(self, 'compile', ('auto', 'true', 'false'))
        _choice(self, 'dtype', ('auto', 'float32', 'bfloat16'))
        self.make_sampler()

    def make_sampler(self) -> Sampler:
        """The sampling settings; `Sampler` checks them (temperature, top_k, method, pool size)."""
        try:
            return Sampler(temperature=self.temperature, top_k=self.top_k, method=self.sampler,
                           num_candidates=self.num_candidates, max_draws=self.max_draws)
        except ValueError as e:
            raise ConfigError(f"{e} (--temperature, --top_k, --sampler, --num_candidates, --max_draws)") from None


@dataclass
class EvalConfig:
    path_fields = ('ckpt', 'data', 'out')  # not an option: the flags naming paths
    ckpt: str = 'out/calm.pt'          # a CALM, baseline or autoencoder checkpoint
    split: str = 'val'                 # val, test (Moby Dick for the bundled corpus), train
    data: str = ''                     # any text instead of a split: a .txt file, a folder of .txt, a .jsonl
    context: int = 256                 # tokens of context per block (same for CALM and the baseline)
    max_blocks: int = 64               # blocks of `context` tokens evaluated (0: all)
    batch_size: int = 16               # blocks per forward pass
    seed: int = 1337                   # every random draw: BrierLM's samples, target latents, the AE's z
    bootstrap: int = 1000              # bootstrap resamples for standard errors
    device: str = 'auto'
    out: str = ''                      # also write the JSON here

    def validate(self):
        _positive(self, 'context', 'batch_size')
        if self.bootstrap < 2:
            raise ConfigError(f"--bootstrap must be >= 2 (resamples for a standard error), got {self.bootstrap}")
        if self.max_blocks < 0:
            raise ConfigError(f"--max_blocks must be >= 0, got {self.max_blocks}")

