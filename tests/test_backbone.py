import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import torch.nn as nn

from calm_min.backbone import BackboneConfig, ResidualSwiGLU, RMSNorm, rope, rope_angles
from calm_min.gpt import GPT, GPTConfig
from calm_min.sampling import Sampler


def reference_attention(q, k, v, mask):
    """Plain masked softmax attention."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float('-inf'))
    return F.softmax(scores, -1) @ v


@given(T=st.integers(1, 12), S_extra=st.integers(0, 6), causal=st.booleans())
@settings(max_examples=25, deadline=None)
def test_sdpa_matches_masked_softmax(T, S_extra, causal):
    g = torch.Generator().manual_seed(T * 100 + S_extra)
    q = torch.randn(2, 3, T, 8, generator=g)
    k = torch.randn(2, 3, T + S_extra, 8, generator=g)
    v = torch.randn(2, 3, T + S_extra, 8, generator=g)
    # query i sits at position S_extra + i (a cache of S_extra keys before it)
    mask = torch.arange(T + S_extra) <= (S_extra + torch.arange(T))[:, None]
    if not causal:
        mask = torch.rand(T, T + S_extra, generator=g) < 0.7
        mask[:, 0] = True  # every query sees something
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    if causal and S_extra == 0:
        out2 = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(out2, reference_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)


@pytest.fixture
def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64))).eval()


@given(split=st.lists(st.integers(1, 5), min_size=1, max_size=5), static=st.booleans(), spare=st.integers(0, 7))
@settings(max_examples=30, deadline=None)
def test_kv_cache_equals_full_recomputation(split, static, spare):
    """Both caches (the static one with `spare` unused positions, masked) give the logits of a full pass."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64))).eval()
    idx = torch.randint(50, (2, sum(split)))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.backbone.make_cache(2, idx.shape[1] + spare * static, 'cpu', static=static)
        parts, s = [], 0
        for n in split:  # feed the sequence in pieces of these sizes
            parts.append(model.lm_head(model.backbone(model.tok_emb(idx[:, s:s + n]), cache=cache)))
            s += n
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_a_clear_error(tiny_gpt):
    cache = tiny_gpt.backbone.make_cache(1, 4, 'cpu')
    with pytest.raises(ValueError, match='KV cache full'):
        tiny_gpt.backbone(torch.randn(1, 5, 64), cache=cache)


def test_rope_relative_positions(tiny_gpt):
    """Shifting every position by the same offset leaves attention (and the output) unchanged."""
    x = torch.randn(1, 6, 64)
    with torch.no_grad():
        a = tiny_gpt.backbone(x)
        b = tiny_gpt.backbone(x, pos=torch.arange(6) + 37)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_gpt_generate_cache_equals_recompute(tiny_gpt):
    idx = torch.randint(50, (3, 5))
    s = Sampler(temperature=0.9, top_k=20)
    a = tiny_gpt.generate(idx, 12, s, generator=torch.Generator().manual_seed(1))
    b = tiny_gpt.generate(idx, 12, s, generator=torch.Generator().manual_seed(1), use_cache=False)
    assert a.shape == (3, 17) and torch.equal(a, b) and torch.equal(a[:, :5], idx)


def test_gpt_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64)))
    idx = torch.randint(50, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5 and loss.item() < 0.1


def test_init_scales_the_residual_projections_by_depth():
    """GPT-2's init, which the backbone keeps: weights N(0, 0.02), the two projections that write into
    the residual stream (attention's proj, SwiGLU's down) N(0, 0.02 / sqrt(2 n_layer)); no biases. With
    65536 or more entries per matrix the sample std has a standard error under 0.3%; 2% is allowed (over
    7 standard errors: a false alarm below 1e-12 per matrix; the seed is fixed)."""
    from calm_min.backbone import Backbone
    torch.manual_seed(0)
    bb = Backbone(BackboneConfig(n_layer=8, n_head=4, n_embd=256))
    for name, p in bb.named_parameters():
        if p.dim() < 2:
            assert 'norm' in name and torch.equal(p, torch.ones_like(p)), name
            continue
        std = 0.02 / 4 if name.endswith(('proj.weight', 'down.weight')) else 0.02
        assert p.std().item() == pytest.approx(std, rel=0.02), name


def test_rope_matches_the_rotation_formula():
    """The three-kernel rope equals rotating each pair (x1_i, x2_i) by angle pos * theta^(-2i/hd)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)                                 # (B, H, T, hd)
    pos = torch.tensor([0, 1, 2, 7, 100])
    ang = pos[:, None].float() * 10000.0 ** (-torch.arange(0, 8, 2).float() / 8)  # (T, 4)
    x1, x2 = x[..., :4], x[..., 4:]
    want = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)
    torch.testing.assert_close(rope(x, *rope_angles(pos, 8, 10000.0)), want, rtol=1e-6, atol=1e-6)


def test_swiglu_loads_checkpoints_with_separate_gate_and_up():
    """Files written before the gate/up fusion (gate.weight, up.weight) load into the fused layer
    and compute the same function; the state-dict hash of the stored tensors is unchanged."""
    g = torch.Generator().manual_seed(0)
    wg, wu, wd = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g), torch.randn(8, 12, generator=g)
    old = {'mlp.gate.weight': wg, 'mlp.up.weight': wu, 'mlp.down.weight': wd, 'norm.weight': torch.ones(8)}
    block = ResidualSwiGLU(8, 12)
    block.load_state_dict(old)
    x = torch.randn(4, 8, generator=g)
    h = F.rms_norm(x, (8,), eps=1e-6) if hasattr(F, 'rms_norm') else x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    want = x + (F.silu(h @ wg.T) * (h @ wu.T)) @ wd.T
    torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-5)
    assert set(old) == {'mlp.gate.weight', 'mlp.up.weight', 'mlp.down.weight', 'norm.weight'}  # caller's dict untouched


@pytest.mark.parametrize('path', ['default', 'fallback'])
def test_rms_norm_matches_its_definition(path, monkeypatch):
    """Through the path this torch takes (here, with the weight requiring a gradient, the CPU training
    function), and through the four-op fallback of a torch without F.rms_norm (< 2.4)."""
    if path == 'fallback':
        import calm_min.backbone as bb
        monkeypatch.setattr(bb, '_HAS_RMS_NORM', False)
        monkeypatch.setattr(bb, '_HAS_FUSED_RMS_NORM', False)
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(16)
    nn.init.normal_(norm.weight, generator=g)
    x = torch.randn(3, 16, generator=g) * 5
    torch.testing.assert_close(norm(x), x / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * norm.weight)


@pytest.mark.skipif(not hasattr(torch, '_fused_rms_norm'), reason="this torch has no _fused_rms_norm")
@given(shape=st.sampled_from([(5, 16), (2, 3, 24), (1, 1, 8), (4, 2, 3, 32)]), transposed=st.booleans(),
       grads=st.sampled_from([(True, True), (True, False), (False, True)]), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_cpu_training_rms_norm_has_the_gradients_of_its_definition(shape, transposed, grads, seed):
    """The float32 CPU training path (`_CPURMSNorm`: LayerNorm's backward kernel at mean 0 plus the
    centring term) gives the output and the gradients of x / rms(x) * w differentiated by autograd in
    float64, for any leading shape, a non-contiguous x, and either input frozen."""
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
    if transposed and len(shape) > 2:                            # a non-contiguous view, as attention outputs are
        x64 = x64.transpose(0, -2).contiguous().transpose(0, -2)
    w64 = 1 + 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    dy64 = torch.randn(*shape, generator=g, dtype=torch.float64)
    norm = RMSNorm(d)
    norm.weight.data.copy_(w64)
    norm.weight.requires_grad_(grads[1])
    x = x64.float().requires_grad_(grads[0])
    y = norm(x)
    assert type(y.grad_fn).__name__ == '_CPURMSNormBackward'      # the fast path is the one under test
    y.backward(dy64.float())
    xr, wr = x64.clone().requires_grad_(grads[0]), w64.clone().requires_grad_(grads[1])
    yr = xr / (xr.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt() * wr
    yr.backward(dy64)
    torch.testing.assert_close(y.double(), yr, rtol=1e-5, atol=1e-5)
    for mine, ref, on in ((x.grad, xr.grad, grads[0]), (norm.weight.grad, wr.grad, grads[1])):
        if on:
            torch.testing.assert_close(mine.double(), ref, rtol=1e-4, atol=1e-4)
        else:
            assert mine is None


@pytest.mark.skipif(not hasattr(torch, '_fused_rms_norm'), reason="this torch has no _fused_rms_norm")
def test_cpu_training_rms_norm_refuses_a_second_derivative():
    x = torch.randn(3, 8, requires_grad=True)
    (gx,) = torch.autograd.grad(RMSNorm(8)(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice'):
        gx.sum().backward()


def test_rms_norm_takes_torch_path_where_the_cpu_function_does_not_apply():
    norm, x = RMSNorm(8), torch.randn(3, 8)
    with torch.no_grad():
        assert norm(x).grad_fn is None                           # inference: torch's kernel, no autograd node
    assert type(norm(x.bfloat16()).grad_fn).__name__ != '_CPURMSNormBackward'   # bf16 input: F.rms_norm


def test_attention_runs_in_float32_when_training_under_cpu_autocast(monkeypatch):
    """Under CPU bf16 autocast, attention takes float32 inputs when gradients are on (training: the
    bf16 backward is the slower one on a CPU) and bf16 inputs when they are off (evaluation,
    generation); without autocast, the weights' dtype."""
    model = GPT(GPTConfig(vocab_size=50, backbone=BackboneConfig(n_layer=2, n_head=2, n_embd=64)))
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, **kw)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    x = torch.randint(50, (2, 12))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(x[:, :-1], x[:, 1:])[1]
        with torch.no_grad():
            model(x[:, :-1], x[:, 1:])
    model(x[:, :-1], x[:, 1:])
    f32, bf16 = (torch.float32,) * 3, (torch.bfloat16,) * 3
    assert seen == [f32, f32, bf16, bf16, f32, f32]
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
