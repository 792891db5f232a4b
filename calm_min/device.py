"""Where and in what precision the scripts run: device choice, bf16 autocast, torch.compile."""
from __future__ import annotations

import contextlib

import torch


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
