"""Checkpoints: written atomically, read with `weights_only=True`, checked before use.

A checkpoint is a plain dict: format, kind ('gpt' | 'ae' | 'calm'), model_config, train_config,
model (state dict of the uncompiled module), optimizer, step, rng, tokenizer identity, log figures;
an autoencoder also records its own content hash, and a CALM checkpoint the embedded autoencoder's
config and hash, verified at load. Also: device and precision selection shared by the scripts.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .autoencoder import AEConfig, Autoencoder, state_hash
from .calm import CALM, CALMConfig
from .gpt import GPT, GPTConfig

FORMAT = 1
KINDS = ('gpt', 'ae', 'calm')


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of the wrong kind; the message says what to do."""


def save_checkpoint(path: Path, ckpt: dict):
    """torch.save to a temporary file in the same folder, then an atomic rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    torch.save({'format': FORMAT, **ckpt}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, kinds: tuple[str, ...] = KINDS) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with `python train.py config/tiny.py "
                              f"--model={kinds[0]}` or pass the right path")
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} could not be read as a checkpoint (corrupt or truncated? "
                              f"{type(e).__name__}: {str(e)[:200]}); retrain or use another file") from None
    if not isinstance(ckpt, dict) or ckpt.get('kind') not in KINDS or 'model' not in ckpt:
        raise CheckpointError(f"{path} is not a calm-min checkpoint (no 'kind' and 'model' entries)")
    if ckpt.get('format') != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')}, this code reads {FORMAT}")
    if ckpt['kind'] not in kinds:
        raise CheckpointError(f"{path} is a '{ckpt['kind']}' checkpoint, but a "
                              f"{' or '.join(repr(k) for k in kinds)} checkpoint is needed here")
    return ckpt


def model_from_checkpoint(ckpt: dict, path='checkpoint'):
    """Rebuild the uncompiled module of a loaded checkpoint and load its weights."""
    kind = ckpt['kind']
    if kind == 'gpt':
        model = GPT(GPTConfig.from_dict(ckpt['model_config']))
    elif kind == 'ae':
        model = Autoencoder(AEConfig.from_dict(ckpt['model_config']))
    else:
        model = CALM(CALMConfig.from_dict(ckpt['model_config']), Autoencoder(AEConfig.from_dict(ckpt['ae_config'])))
    try:
        model.load_state_dict(ckpt['model'])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the recorded config ({str(e)[:300]})") from None
    if kind == 'calm' and state_hash(model.ae) != ckpt['ae_hash']:
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
    ckpt = load_checkpoint(path, ('ae',))
    if ckpt['tokenizer'] != tokenizer:
        raise CheckpointError(f"autoencoder {path} was trained with tokenizer {ckpt['tokenizer']} but the data "
                              f"uses {tokenizer}: train an autoencoder on this data (--model=ae) or use the "
                              f"matching --dataset/--tokenizer")
    ae_K = ckpt['model_config']['chunk_size']
    if ae_K != chunk_size:
        raise CheckpointError(f"autoencoder {path} has chunk_size K={ae_K} but --chunk_size={chunk_size}: "
                              f"pass --chunk_size={ae_K} or train a matching autoencoder")
    ae = model_from_checkpoint(ckpt, path)
    if state_hash(ae) != ckpt['hash']:
        raise CheckpointError(f"autoencoder {path}: weights do not match their recorded hash; the file is damaged")
    return ae, ckpt


# ----------------------------------------------------------------------------------------------
# device and precision


def pick_device(name: str = 'auto') -> torch.device:
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    dev = torch.device(name)
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"--device={name} but CUDA is not available here; use --device=auto or cpu")
    return dev


def use_compile(choice: str, device: torch.device) -> bool:
    """--compile: 'true', 'false', or 'auto' (on for CUDA, off elsewhere)."""
    return choice == 'true' or (choice == 'auto' and device.type == 'cuda')


def autocast(device: torch.device, dtype: str = 'auto'):
    """bf16 autocast where supported ('auto': CUDA with bf16), else a no-op context."""
    use_bf16 = dtype == 'bfloat16' or (dtype == 'auto' and device.type == 'cuda' and torch.cuda.is_bf16_supported())
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
