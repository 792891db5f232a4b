"""Checkpoints: written atomically, read with `weights_only=True`, checked before use.

A checkpoint is a plain dict: format, kind ('gpt' | 'ae' | 'calm'), model_config, train_config,
model (state dict of the uncompiled module), optimizer, step, rng_ranks (every process's generator
states), tokenizer identity and JSON, log figures; an autoencoder also records its own content hash
(`state_hash`), and a CALM checkpoint the embedded autoencoder's config and hash, verified at load.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from .autoencoder import AEConfig, Autoencoder
from .calm import CALM, CALMConfig
from .gpt import GPT, GPTConfig

FORMAT = 1
KINDS = ('gpt', 'ae', 'calm')


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind; the message says what to do."""


def state_hash(module: nn.Module | dict) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a module's state dict, or of a state dict
    (its identity). Checks hash the tensors as a file stores them, so files written before a change
    of parameter names (e.g. the fused gate/up projection) still verify."""
    h = hashlib.sha256()
    sd = module.state_dict() if isinstance(module, nn.Module) else module
    for name, t in sorted(sd.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, ckpt: dict):
    """torch.save to a temporary file in the same folder, then an atomic rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    torch.save({'format': FORMAT, **ckpt}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, kinds: tuple[str, ...] = KINDS, tokenizer: dict | None = None) -> dict:
    """Read and check a checkpoint; with `tokenizer` (an identity dict), refuse one trained on another."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob('*.pt'))
        raise CheckpointError(f"{path} is a folder, not a checkpoint: pass a .pt file"
                              + (f" inside it ({', '.join(found)})" if found else ''))
    if not path.is_file():
        kind = path.stem if path.stem in kinds else kinds[-1]
        raise CheckpointError(f"checkpoint {path} not found: pass one that train.py wrote (--out_dir/{kind}.pt; the "
                              f"quick start writes to out/tiny_bytes/), or train one with `python train.py "
                              f"config/tiny_bytes.py --model={kind}`")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        if 'Unsupported global' in str(e):
            raise CheckpointError(f"{path} could not be read as a checkpoint: it holds Python objects other than "
                                  f"tensors and plain data, and loading those would run code; refused") from None
        why = 'not a tensor-only file' if 'Weights only load failed' in str(e) else str(e)[:200]  # never torch's unsafe hint
        raise CheckpointError(f"{path} could not be read as a checkpoint (corrupt or truncated? "
                              f"{type(e).__name__}: {why}); retrain or use another file") from None
    if not isinstance(ckpt, dict) or ckpt.get('kind') not in KINDS or 'model' not in ckpt:
        raise CheckpointError(f"{path} is not a calm-min checkpoint (no 'kind' and 'model' entries)")
    if ckpt.get('format') != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')}, this code reads {FORMAT}")
    if ckpt['kind'] not in kinds:
        raise CheckpointError(f"{path} is a checkpoint of kind '{ckpt['kind']}', but kind "
                              f"{' or '.join(repr(k) for k in kinds)} is needed here")
    if tokenizer is not None:
        check_tokenizer(ckpt, tokenizer, path)
    return ckpt


def check_tokenizer(ckpt: dict, tokenizer: dict, path):
    """Refuse a checkpoint trained with another tokenizer than the data's (identity dicts)."""
    if ckpt.get('tokenizer') != tokenizer:
        raise CheckpointError(f"{path} was trained with tokenizer {ckpt.get('tokenizer')} but the data uses "
                              f"{tokenizer}: train on this data (python train.py --model={ckpt['kind']}) or use "
                              f"the matching --dataset/--tokenizer")


def model_from_checkpoint(ckpt: dict, path='checkpoint'):
    """Rebuild the uncompiled module of a loaded checkpoint and load its weights."""
    kind = ckpt['kind']
    try:
        if kind == 'gpt':
            model = GPT(GPTConfig.from_dict(ckpt['model_config']))
        elif kind == 'ae':
            model = Autoencoder(AEConfig.from_dict(ckpt['model_config']))
        else:
            model = CALM(CALMConfig.from_dict(ckpt['model_config']), Autoencoder(AEConfig.from_dict(ckpt['ae_config'])))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its recorded config is missing or damaged ({type(e).__name__}: "
                              f"{str(e)[:200]}); retrain or use another file") from None
    try:
        model.load_state_dict(ckpt['model'])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not fit the recorded config ({str(e)[:300]})") from None
    if not all(torch.isfinite(t).all() for t in ckpt['model'].values() if t.is_floating_point()):
        raise CheckpointError(f"{path} holds NaN or inf weights (a diverged run): use an earlier checkpoint")
    if kind == 'calm' and state_hash({k[3:]: v for k, v in ckpt['model'].items() if k.startswith('ae.')}) != ckpt['ae_hash']:
        raise CheckpointError(f"{path}: the embedded autoencoder's weights do not match the hash recorded "
                              f"when CALM was trained (autoencoder/model mismatch); the file is damaged")
    return model


def load_model(path, kinds: tuple[str, ...] = KINDS, device='cpu'):
    """(model in eval mode on `device`, checkpoint dict)."""
    ckpt = load_checkpoint(path, kinds)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    return model, ckpt


def load_autoencoder(path, tokenizer: dict, chunk_size: int) -> tuple[Autoencoder, dict]:
    """The frozen AE for CALM: refuse one trained with another tokenizer or chunk size."""
    ckpt = load_checkpoint(path, ('ae',), tokenizer)
    ae_K = ckpt['model_config']['chunk_size']
    if ae_K != chunk_size:
        raise CheckpointError(f"autoencoder {path} has chunk_size K={ae_K} but --chunk_size={chunk_size}: "
                              f"pass --chunk_size={ae_K} or train a matching autoencoder")
    if not ckpt.get('finished', True):
        raise CheckpointError(f"autoencoder {path} is from a run that stopped at step {ckpt['step']} of "
                              f"{ckpt['train_config'].get('ae_max_iters')}: finish it first (python train.py ... "
                              f"--model=ae --resume=true) or pass a finished --ae_ckpt")
    ae = model_from_checkpoint(ckpt, path)
    if state_hash(ckpt['model']) != ckpt['hash']:
        raise CheckpointError(f"autoencoder {path}: weights do not match their recorded hash; the file is damaged")
    return ae, ckpt
