"""Where and in what precision the scripts run: device choice, bf16 autocast, torch.compile."""
from __future__ import annotations

import contextlib

import torch


def pick_device(name: str = 'auto') -> torch.device:
    """--device: auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps; a ConfigError for anything else."""
    from .config import ConfigError
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        if getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available():
            return torch.device('mps')
        return torch.device('cpu')
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type not in ('cpu', 'cuda', 'mps'):
        raise ConfigError(f"--device={name!r}: use auto, cpu, cuda, cuda:N or mps")
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"--device={name} but CUDA is not available here; use --device=auto or cpu")
    if dev.type == 'cuda' and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device={name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device={name} but MPS is not available here; use --device=auto or cpu")
    return dev


def use_compile(choice: str, device: torch.device) -> bool:
    """--compile: 'true', 'false', or 'auto' (on for CUDA, off elsewhere)."""
    return choice == 'true' or (choice == 'auto' and device.type == 'cuda')


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (x86 avx512_bf16 or AMX), as torch reads its
    CPU capability (`torch.cpu._is_avx512_bf16_supported`); /proc/cpuinfo where torch lacks that call."""
    probe = [getattr(torch.cpu, n, None) for n in ('_is_avx512_bf16_supported', '_is_amx_tile_supported')]
    if all(probe):
        return any(f() for f in probe)
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return False
    return ' avx512_bf16' in flags or ' amx_bf16' in flags


def autocast(device: torch.device, dtype: str = 'auto'):
    """bf16 autocast where it is fast, else a no-op context. 'auto': CUDA with bf16, or a CPU with
    hardware bf16 (measured 2.2x the fp32 training throughput of the tiny models on such a CPU;
    emulated bf16 on other CPUs would be slower than fp32, so there 'auto' stays float32)."""
    fast = (device.type == 'cuda' and torch.cuda.is_bf16_supported()) or (device.type == 'cpu' and cpu_has_bf16())
    use_bf16 = dtype == 'bfloat16' or (dtype == 'auto' and fast)
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compiled_decode_step(model):
    """`model.decode_step` through torch.compile as one whole graph with static shapes (no graph breaks:
    fullgraph=True fails loudly rather than falling back op by op). Compiled on first use and kept on
    the model; a new batch size, cache length, dtype or device compiles another graph (dynamo's guards)."""
    fn = model.__dict__.get('_compiled_decode_step')
    if fn is None:
        fn = torch.compile(model.decode_step, fullgraph=True, dynamic=False)
        model.__dict__['_compiled_decode_step'] = fn
    return fn


# dense bf16 peak FLOP/s of common accelerators (vendor datasheets, no sparsity), for MFU
PEAK_BF16 = {'H200': 989e12, 'H100 SXM': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12,
             'A100': 312e12, 'L40S': 362e12, 'L4': 121e12, 'A10G': 70e12, 'A10': 125e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s (per GPU) from its CUDA name, or None (CPU, unknown GPU)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)
