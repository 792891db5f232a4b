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


def resolve_dtype(device: torch.device, dtype: str = 'auto') -> torch.dtype:
    """--dtype as a torch dtype. 'auto': bfloat16 on CUDA with bf16 and on a CPU with hardware bf16
    (measured 2.2x the fp32 training throughput of the tiny models on such a CPU; emulated bf16 on
    other CPUs would be slower than fp32), else float32."""
    fast = (device.type == 'cuda' and torch.cuda.is_bf16_supported()) or (device.type == 'cpu' and cpu_has_bf16())
    return torch.bfloat16 if dtype == 'bfloat16' or (dtype == 'auto' and fast) else torch.float32


def autocast(device: torch.device, dtype: str = 'auto'):
    """Training's precision: bf16 autocast (weights and optimiser in float32) where `resolve_dtype`
    says bfloat16, else a no-op context."""
    if resolve_dtype(device, dtype) == torch.bfloat16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def decode_cache_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype for generation with weights in `dtype`. On CPU always float32: there,
    attention with one bf16 query over a bf16 cache ran 2-4x slower than in float32 (the tiny models,
    2 cores; docs/throughput.md), while the cache is small beside the weights. Elsewhere the weights'
    dtype (bf16 FlashAttention on CUDA)."""
    return torch.float32 if device.type == 'cpu' else dtype


def keep_freed_memory(device: torch.device) -> bool:
    """On a CPU, ask glibc to keep the memory a process frees instead of handing it back to the OS:
    its trim threshold and its mmap threshold set to 1 GiB, the same as MALLOC_TRIM_THRESHOLD_ and
    MALLOC_MMAP_THRESHOLD_ in the environment. A CPU training step frees its activations and allocates
    them again in the next step; by default glibc returns part of that memory after each step, and the
    next step faults the pages in afresh (15-35 thousand minor page faults per step at the tiny sizes,
    docs/throughput.md). The process then keeps its peak memory, which a training run reaches every
    step anyway. train.py and bench.py call this; the library itself never does. Returns whether it
    took effect (False for a GPU device, whose host allocations are small, and off glibc, e.g. on macOS)."""
    if device.type != 'cpu':
        return False
    import ctypes
    import ctypes.util
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library('c')).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                 # glibc's <malloc.h>
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, 1 << 30))


DECODE_MM_ROWS = 4  # products with up to this many rows are written by inductor (K = 4: the AE decoder's rows, where not split)
DECODE_MM_MAX_SIDE = 2048  # ... and with both sides of the weight up to this (torch's default on CPU)


def decode_compile_options(device: torch.device) -> dict:
    """Inductor options for the decoding step. At batch 1 every backbone product is a matrix-vector
    product (M = 1) and the AE decoder's token stage has M = K = 4 rows (split into K one-row
    products where all of them pass the sides check below: `Autoencoder.decode_logits`). Inductor's
    memory-bound-mm pass writes such products (on CPU: M <= DECODE_MM_ROWS, other sides <=
    DECODE_MM_MAX_SIDE) as its own fused, vectorised reductions instead of calling the BLAS once per
    product, which here costs more than the arithmetic (docs/throughput.md: the largest gain of the
    compiled step on 2 CPU cores). The pass only fires on CUDA for M >= 10240, so it does nothing to
    CUDA decoding.

    It also turns off inductor's `size_asserts`: the graph's wrapper checks the size and stride of
    every input (each parameter too) on every call, 40-100 Python-level checks per step here. Dynamo's
    guards check the same when `decoding_step` calls the graph first in a loop, and inside the loop the
    inputs are the step's own outputs and cache, whose layout cannot change.

    On CPU (`device`) the wrapper itself is C++ (`cpp_wrapper`): the step's buffers are allocated and
    its kernels called without going through Python, 1-14% more tokens/s at the same compile time
    (docs/throughput.md). On CUDA it is left off, not yet measured there. Options this torch's
    inductor lacks are left out."""
    from torch._inductor import config as inductor_config
    options = {'size_asserts': False} if hasattr(inductor_config, 'size_asserts') else {}
    if device.type == 'cpu' and hasattr(inductor_config, 'cpp_wrapper'):
        options['cpp_wrapper'] = True
    if not hasattr(inductor_config, 'post_grad_fusion_options'):
        return options
    mm = {'cpu_max_first_dimension_decomposition': DECODE_MM_ROWS,
          'cpu_max_other_dimension_decomposition': DECODE_MM_MAX_SIDE}
    # torch reads the pass's thresholds from these options once, when its first compilation imports the
    # pass; in a process that compiled something before, set the pass's own copy as well. Only graphs
    # compiled with the pass turned on (these options) read it.
    try:
        from torch._inductor.fx_passes import decompose_mem_bound_mm as mm_pass
        if hasattr(mm_pass, 'cpu_max_first_dimension_decomposition'):
            mm_pass.cpu_max_first_dimension_decomposition = DECODE_MM_ROWS
            mm_pass.cpu_max_other_dimension_decomposition = DECODE_MM_MAX_SIDE
    except ImportError:  # an older torch: the options alone
        pass
    return {**options, 'post_grad_fusion_options': {**inductor_config.post_grad_fusion_options, 'decompose_mm_pass': mm}}


def compile_for_decoding(fn, device: torch.device, cuda_graphs: bool = False):
    """fn through torch.compile as one whole graph with static shapes (fullgraph=True fails loudly
    rather than falling back op by op) and the decoding options above for `device` (where fn's
    tensors live). cuda_graphs=True also replays the graph as a CUDA graph (what
    mode='reduce-overhead' turns on; torch.compile takes a mode or options, not both), which on CUDA
    launches the step's kernels at once; elsewhere it changes nothing."""
    options = decode_compile_options(device)
    if cuda_graphs:
        options['triton.cudagraphs'] = True
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def compiled_decode_step(model, cuda_graphs: bool = False):
    """`model.decode_step` through `compile_for_decoding`. Compiled on first use and kept on the
    model, one per device type (the options differ); a new batch size, cache length, dtype or device
    compiles another graph (dynamo's guards)."""
    device = next(model.parameters()).device
    key = f'_compiled_decode_step_{device.type}' + ('_cuda_graphs' if cuda_graphs else '')
    fn = model.__dict__.get(key)
    if fn is None:
        fn = compile_for_decoding(model.decode_step, device, cuda_graphs)
        model.__dict__[key] = fn
    return fn


COMPILE_CHOICES = (False, True, 'cudagraphs')


@contextlib.contextmanager
def decoding_step(model, compile: bool | str, cache=None):
    """The step a generation loop calls: `model.decode_step`, or with compile=True its compiled graph.
    Compiled, the first call runs dynamo's guard check, which picks (or compiles) the graph for these
    shapes, dtypes and this model; later calls inside the `with` block skip the check
    (`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`). Inside one loop nothing the guards
    look at changes, only the values in the inputs, so the check could only pass again; it cost
    about a tenth of CALM's compiled step at the tiny sizes (bench.py --what=profile). The stance
    is restored when the block ends, on an exception too. It is process-wide: do not run compiled
    generation in two threads at once.

    compile='cudagraphs': the compiled graph replayed as a CUDA graph (on CUDA; elsewhere the same as
    True). The static `cache` is marked as living at fixed addresses, so the graph writes it in place,
    and each step's output is copied out, since the next replay reuses its memory. Not yet measured
    on a GPU (docs/throughput.md); a new cache per `generate` call makes the graph record again."""
    if compile not in COMPILE_CHOICES:
        raise ValueError(f"compile must be False, True or 'cudagraphs'; got {compile!r}")
    if not compile:
        yield model.decode_step
        return
    graphs = compile == 'cudagraphs'
    if graphs and cache is not None:
        cache.mark_static_addresses()
    fn, checked = compiled_decode_step(model, graphs), False
    with contextlib.ExitStack() as stack:
        def step(*args):
            nonlocal checked
            out = fn(*args)
            if graphs:
                out = out.clone()
            if not checked:
                checked = True
                try:                                   # sets the stance now, restores it when the stack closes
                    stack.enter_context(torch.compiler.set_stance(skip_guard_eval_unsafe=True))
                except (AttributeError, TypeError):    # torch < 2.6: every call is checked
                    pass
            return out
        yield step


# dense bf16 peak FLOP/s of common accelerators (vendor datasheets, no sparsity), for MFU; the first key
# found in the device's name wins, so a name that holds another comes before it (L40S, L40, L4)
PEAK_BF16 = {'H200': 989e12, 'H100 SXM': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12,
             'A100': 312e12, 'L40S': 362e12, 'L40': 181e12, 'L4': 121e12, 'A10G': 70e12, 'A10': 125e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak FLOP/s (per GPU) from its CUDA name, or None (CPU, unknown GPU)."""
    if device.type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)
