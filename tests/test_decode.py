"""Overhead-free generation: the decoding step, eager (growing cache) and compiled (torch.compile over a
StaticKVCache), gives the tokens of the no-cache reference for a fixed generator."""
import copy
import re

import pytest
import torch

from calm_min.autoencoder import AEConfig, Autoencoder
from calm_min.backbone import BackboneConfig
from calm_min.calm import CALM, CALMConfig
from calm_min.gpt import GPT, GPTConfig
from calm_min.sampling import Sampler
from test_calm import spread_head

BB = BackboneConfig(n_layer=2, n_head=2, n_embd=64)


def models():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=50, backbone=BB)).eval()
    ae = Autoencoder(AEConfig(vocab_size=50, chunk_size=4, latent_size=16, dim=64, hidden=128, mask_id=49)).eval()
    calm = CALM(CALMConfig(backbone=BB, head_blocks=2), ae).eval()
    spread_head(calm.head)                              # samples that depend on h, as after training
    return gpt, calm


@pytest.fixture(scope='module')
def compiler():
    try:
        torch.compile(lambda x: x.sin() + 1, fullgraph=True)(torch.ones(3))
    except Exception as e:  # no C++ compiler, unsupported platform
        pytest.skip(f"torch.compile is not available here: {type(e).__name__}: {str(e)[:100]}")


@pytest.mark.parametrize('sampler', [Sampler(), Sampler(temperature=0.7, top_k=5)])
def test_cached_generation_equals_reference(sampler):
    """Eager cached decoding (`decode_step` at T = 1, the sampler below) == full recomputation every
    step (no cache), same generator."""
    gpt, calm = models()
    prompt = torch.randint(50, (3, 6))
    for model in (gpt, calm):
        if model is calm and sampler.top_k:
            continue
        a = model.generate(prompt, 21, sampler, torch.Generator().manual_seed(1))
        b = model.generate(prompt, 21, sampler, torch.Generator().manual_seed(1), use_cache=False)
        assert torch.equal(a, b), model.kind


def test_compiled_decode_step_gives_the_eager_tokens(compiler):
    """generate(compile=True) runs each step as one compiled graph: the same tokens as eager, for
    both models, at two lengths (the second reuses or recompiles the graph without error) and at
    batch 1 (on CPU the AE decoder's graph differs there: `Autoencoder.decode_logits`)."""
    gpt, calm = models()
    for model in (gpt, calm):
        for B, n, seed in ((2, 30, 1), (2, 70, 2), (1, 30, 3)):
            prompt = torch.randint(50, (B, 5), generator=torch.Generator().manual_seed(seed))
            eager = model.generate(prompt, n, generator=torch.Generator().manual_seed(seed))
            comp = model.generate(prompt, n, generator=torch.Generator().manual_seed(seed), compile=True)
            assert torch.equal(eager, comp), (model.kind, B, n)
            assert not torch._dynamo.eval_frame._stance.skip_guard_eval_unsafe   # the guard check is back on


def test_compiled_generation_of_models_in_turn(compiler):
    """Within a generate() loop the compiled step skips dynamo's guard check after its first call
    (`device.decoding_step`). Models in turn, each with its own weights, one in float64, and a new batch
    size, all through the one compiled function of the class: each gives its own eager tokens."""
    gpt, calm = models()
    torch.manual_seed(5)
    gpt2, calm2 = models()
    for p in list(gpt2.parameters()) + list(calm2.head.parameters()):
        torch.nn.init.normal_(p, std=0.3)
    runs = [(gpt, 2), (gpt2, 2), (copy.deepcopy(gpt2).double(), 2), (gpt, 3), (calm, 2), (calm2, 2), (calm, 3)]
    for i, (model, B) in enumerate(runs):
        prompt = torch.randint(50, (B, 5), generator=torch.Generator().manual_seed(i))
        eager = model.generate(prompt, 9, generator=torch.Generator().manual_seed(i))
        comp = model.generate(prompt, 9, generator=torch.Generator().manual_seed(i), compile=True)
        assert torch.equal(eager, comp), i


def test_compiled_generation_compiles_the_step_once(compiler):
    """One generate(compile=True) call compiles one graph, whatever the prompt's length: the first
    step's input (a slice of the prompt) is laid out like the step's own outputs, so dynamo's stride
    guards do not fail on the second step (they did: a second 20-60 s compilation on a CPU)."""
    from torch._dynamo.utils import counters
    gpt, calm = models()
    prompt = torch.randint(50, (2, 7))          # not a whole number of chunks; batch 2
    for model in (gpt, calm):
        torch._dynamo.reset()                   # dynamo's cache is per function: start empty
        before = counters['stats']['unique_graphs']
        model.generate(prompt, 12, generator=torch.Generator().manual_seed(0), compile=True)
        assert counters['stats']['unique_graphs'] - before == 1, model.kind


def test_compiled_step_calls_no_blas_at_batch_1(compiler):
    """At batch 1 the compiled step's matrix products (M = 1 in the backbone, head and, one token at a
    time, the AE decoder) are written by inductor (`device.decode_compile_options`), none is a BLAS
    call: the code inductor generates for either model's step (its Python or, on CPU, C++ wrapper)
    calls no extern matrix product. A one-chunk / one-token prompt, so no eager prefill. This holds
    even though other tests compiled before in this process."""
    from torch._inductor.utils import run_and_get_code
    decompose_mem_bound_mm = pytest.importorskip('torch._inductor.fx_passes.decompose_mem_bound_mm')
    if not hasattr(decompose_mem_bound_mm, 'cpu_max_first_dimension_decomposition'):
        pytest.skip("this torch's inductor has no CPU threshold for its memory-bound-mm pass")
    blas = re.compile(r'extern_kernels\.(?:mm|addmm|bmm|baddbmm)\(|aoti_torch_cpu_(?:mm|addmm|bmm|baddbmm)_out')
    for cpp in (False, True):            # the pattern matches a BLAS call in either wrapper's code
        probe = torch.compile(lambda x, w: x @ w, options={'cpp_wrapper': cpp})
        assert blas.search(run_and_get_code(probe, torch.randn(64, 32), torch.randn(32, 16))[1][0]), cpp
    gpt, calm = models()
    for model, prompt in ((gpt, torch.randint(50, (1, 1))), (calm, torch.randint(50, (1, 4)))):
        _, code = run_and_get_code(lambda: model.generate(prompt, 8, generator=torch.Generator().manual_seed(0),
                                                          compile=True))
        assert code, model.kind                               # the step was compiled and its code seen
        assert not any(blas.search(c) for c in code), (model.kind, [blas.findall(c) for c in code])


def test_cudagraphs_mode_gives_the_eager_tokens(compiler):
    """generate(compile='cudagraphs') takes the compiled path with CUDA graphs asked for: its cache marked
    as static, each step's output copied out. On CPU inductor replays no CUDA graph, so this checks
    that the path compiles and gives the eager tokens; the CUDA test below checks the graphs."""
    gpt, calm = models()
    prompt = torch.randint(50, (2, 5))
    for model in (gpt, calm):
        eager = model.generate(prompt, 30, generator=torch.Generator().manual_seed(3))
        graphs = model.generate(prompt, 30, generator=torch.Generator().manual_seed(3), compile='cudagraphs')
        assert torch.equal(eager, graphs), model.kind


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_graphs_give_the_compiled_tokens(compiler):
    """On CUDA, the step replayed as a CUDA graph gives exactly the tokens of the same compiled step
    launched kernel by kernel (the same kernels), over two generate calls (the second records again,
    with a new cache) and at a second length: a replay that overwrote an output still in use, or wrote
    a stale cache, would change them."""
    gpt, calm = models()
    prompt = torch.randint(50, (2, 5), device='cuda')
    for model in (gpt.cuda(), calm.cuda()):
        for n, seed in ((30, 1), (30, 2), (70, 3)):
            g = lambda: torch.Generator(device='cuda').manual_seed(seed)
            comp = model.generate(prompt, n, generator=g(), compile=True)
            graphs = model.generate(prompt, n, generator=g(), compile='cudagraphs')
            assert torch.equal(comp, graphs), (model.kind, n, seed)


def test_generate_refuses_an_unknown_compile_choice():
    gpt, _ = models()
    with pytest.raises(ValueError, match="compile must be False, True or 'cudagraphs'"):
        gpt.generate(torch.zeros(1, 2, dtype=torch.long), 3, compile='cuda')


def test_cached_generation_equals_reference_for_every_prompt_length():
    """Prompts of 1, 2, 3 and 9 tokens (the baseline prefills all but the last token; CALM left-pads to
    whole chunks and prefills all but the last chunk): cached decoding gives the no-cache tokens."""
    gpt, calm = models()
    for T0 in (1, 2, 3, 9):
        prompt = torch.randint(50, (2, T0), generator=torch.Generator().manual_seed(T0))
        for model in (gpt, calm):
            a = model.generate(prompt, 9, generator=torch.Generator().manual_seed(T0))
            b = model.generate(prompt, 9, generator=torch.Generator().manual_seed(T0), use_cache=False)
            assert torch.equal(a, b), (model.kind, T0)
