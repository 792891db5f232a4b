"""The Transformer backbone shared by CALM and the discrete baseline (docs/method.md section 3: a standard
causal Transformer, Llama-style as in the official code): pre-norm RMSNorm, rotary position embeddings, SwiGLU, no
biases, attention through `F.scaled_dot_product_attention` (FlashAttention on CUDA).

It takes input *embeddings* (B, T, d) and returns normalised hidden states (B, T, d): the baseline
feeds token embeddings, CALM feeds compressed chunk vectors. `KVCache` makes decoding incremental,
`StaticKVCache` does so with fixed shapes, so that a decoding step compiles to one graph;
explicit `pos` and `mask` let a caller attend in any pattern (BrierLM uses this to roll out every
position of a block in parallel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BackboneConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    ffn_hidden: int = 0          # 0: 8/3 * n_embd rounded up to a multiple of 64 (Llama)
    rope_theta: float = 10000.0

    @property
    def hidden(self) -> int:
        return self.ffn_hidden or 64 * math.ceil(8 * self.n_embd / 3 / 64)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, through torch's `F.rms_norm` (torch >= 2.4; one fused kernel
    on CUDA, a few kernels on CPU, as torch writes it there; a four-op fallback before 2.4). Training
    in float32 eager on a CPU takes `_CPURMSNorm`, the same forward with a cheaper backward."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if (_HAS_FUSED_RMS_NORM and x.device.type == 'cpu' and x.dtype == torch.float32 and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad) and not torch.compiler.is_compiling()):
            return _CPURMSNorm.apply(x, self.weight, self.eps)
        if _HAS_RMS_NORM:  # under bf16 autocast x may be bf16: the fused kernel wants one dtype
            return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class _CPURMSNorm(torch.autograd.Function):
    """RMSNorm for float32 CPU training. On a CPU torch differentiates `F.rms_norm` op by op (about ten
    kernels); here the forward is the same kernel, which also returns 1/rms, and the backward is torch's
    one-kernel LayerNorm backward with the mean set to 0 (so its x^ is x/rms and its weight gradient is
    RMSNorm's) plus the one term LayerNorm's centring takes away, rstd * mean(dy * weight): a
    matrix-vector product. Tested against autograd through `F.rms_norm` (tests/test_backbone.py)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        y, rstd = torch._fused_rms_norm(x, [x.shape[-1]], weight, eps)          # (..., d), (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable      # a second derivative would miss d(rstd)/dx: refuse it
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        dx, dw, _ = torch.ops.aten.native_layer_norm_backward(
            dy, x, [x.shape[-1]], torch.zeros_like(rstd), rstd, weight, None,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if dx is not None:
            dx.add_(rstd * (dy @ weight).unsqueeze(-1), alpha=1 / x.shape[-1])    # (..., d) += (..., 1)
        return dx, dw, None


_HAS_RMS_NORM = hasattr(F, 'rms_norm')
_HAS_FUSED_RMS_NORM = hasattr(torch, '_fused_rms_norm')  # torch's kernel behind F.rms_norm, with 1/rms


class SwiGLU(nn.Module):
    """W_down (SiLU(W_gate x) * W_up x), no biases; W_gate and W_up are one (2 hidden, dim) matrix,
    so both come from one matrix product."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)                          # (..., hidden) each
        return self.down(F.silu(gate) * up)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the fusion hold gate.weight and up.weight apart
        if prefix + 'gate.weight' in state_dict and prefix + 'gate_up.weight' not in state_dict:
            state_dict[prefix + 'gate_up.weight'] = torch.cat([state_dict.pop(prefix + 'gate.weight'),
                                                               state_dict.pop(prefix + 'up.weight')])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ResidualSwiGLU(nn.Module):
    """h <- h + SwiGLU(RMSNorm(h)): the position-wise block of the backbone and the autoencoder."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


def rope_angles(pos: torch.Tensor, head_dim: int, theta: float):
    """(cos, sin) of the angles pos * theta^(-2i/hd) for the two halves of a head, each (T, hd):
    cos repeated, sin signed (-sin for the first half, +sin for the second); computed once per forward."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    ang = pos.to(torch.float32)[:, None] * inv_freq                                          # (T, hd/2)
    cos, sin = ang.cos(), ang.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)                            # (T, hd) each


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves (x1, x2) of each head (x: (B, H, T, hd)) by the precomputed angles:
    (x1 cos - x2 sin, x2 cos + x1 sin) = x * cos + swap_halves(x) * signed sin, three kernels."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    swapped = x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)                                  # (x2, x1)
    return torch.addcmul(x * cos, swapped, sin)


class KVCache:
    """Keys and values of every layer, preallocated for `max_len` positions: (B, H, max_len, hd) each.
    `length` (a Python int) counts the positions filled; attention reads the filled part only. Used
    where the number of queries varies (prefill, BrierLM's tree rollouts)."""

    def __init__(self, cfg: BackboneConfig, batch_size: int, max_len: int, device, dtype=torch.float32):
        hd = cfg.n_embd // cfg.n_head
        shape = (batch_size, cfg.n_head, max_len, hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0          # positions filled so far
        self.max_len = max_len

    def positions(self, T: int, device) -> torch.Tensor:
        return torch.arange(self.length, self.length + T, device=device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        """Store k, v (B, H, T, hd) after the filled positions -> (keys, values, mask, is_causal) to attend."""
        start, T = self.length, k.shape[2]
        if start + T > self.max_len:
            raise ValueError(f"KV cache full: {start} + {T} positions > max_len {self.max_len}")
        self.k[layer][:, :, start:start + T] = k.to(self.k[layer].dtype)
        self.v[layer][:, :, start:start + T] = v.to(self.v[layer].dtype)
        is_causal = mask is None and (start == 0 and T > 1)
        if mask is None and start > 0 and T > 1:  # query i sits at position start + i and sees keys 0..start+i
            mask = torch.arange(start + T, device=k.device) <= (start + torch.arange(T, device=k.device))[:, None]
        return self.k[layer][:, :, :start + T], self.v[layer][:, :, :start + T], mask, is_causal

    def advance(self, T: int):
        self.length += T


class StaticKVCache(KVCache):
    """The same buffers with the fill position held as a tensor (`pos`, shape (1,)): every step has
    the same shapes and no Python-side state, so a decoding step compiles to one graph
    (`torch.compile(..., dynamic=False)`). Attention reads all max_len keys and masks those not yet
    written. A caller that runs past max_len gets wrong results, not an error (a tensor check would
    cost a device sync per step): the models' `generate` sizes the cache for the whole output."""

    def __init__(self, cfg: BackboneConfig, batch_size: int, max_len: int, device, dtype=torch.float32):
        super().__init__(cfg, batch_size, max_len, device, dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.key_pos = torch.arange(max_len, device=device)                  # (S,)

    def positions(self, T: int, device) -> torch.Tensor:
        return self.pos + torch.arange(T, device=device)                     # (T,)

    def mark_static_addresses(self):
        """Tell torch.compile that these buffers keep their addresses from call to call, so that a
        CUDA graph (`generate(compile='cudagraphs')`) writes them in place instead of copying them in."""
        for t in (*self.k, *self.v, self.pos, self.key_pos):
            torch._dynamo.mark_static_address(t)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        if mask is not None:
            raise ValueError("StaticKVCache attends causally; pass no mask")
        where = self.positions(k.shape[2], k.device)                         # (T,)
        self.k[layer].index_copy_(2, where, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, where, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer], self.key_pos <= where[:, None], False   # mask (T, S)

    def advance(self, T: int):
        self.pos += T


def cache_length(n: int, multiple: int = 64) -> int:
    """A static cache's length for n positions, rounded up so that nearby lengths share one compiled graph."""
    return -(-n // multiple) * multiple


class Attention(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x, rot, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, hd)
        q, k = rope(q, *rot), rope(k, *rot)
        is_causal = mask is None and T > 1
        if cache is not None:  # attention runs in the cache's dtype (`device.decode_cache_dtype`)
            k, v, mask, is_causal = cache.update(layer, k, v, mask)                               # (B, H, S, hd)
        if _float32_attention(q):
            with torch.autocast('cpu', enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                   is_causal=is_causal)                           # (B, H, T, hd)
        else:
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask,
                                               is_causal=is_causal)                               # (B, H, T, hd)
        return self.proj(y.to(q.dtype).transpose(1, 2).reshape(B, T, C))


def _float32_attention(q: torch.Tensor) -> bool:
    """Whether attention runs in float32 although CPU autocast is on: when training (gradients on). On a
    CPU, torch's flash-attention backward is slower in bf16 than in float32 (torch 2.13: about 1.5x for
    the baseline's and 5x for CALM's at the tiny sizes), while its forward is faster in bf16, so
    evaluation and generation under autocast keep bf16 (docs/throughput.md, *The second CPU again*)."""
    return q.device.type == 'cpu' and torch.is_grad_enabled() and torch.is_autocast_enabled('cpu')


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp = ResidualSwiGLU(cfg.n_embd, cfg.hidden)

    def forward(self, x, rot, mask=None, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), rot, mask, cache, layer)
        return self.mlp(x)


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd)
        self.apply(init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale the residual projections by depth
            if name.endswith('proj.weight') or name.endswith('down.weight'):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d) -> hidden states (B, T, d). Without `pos`, positions continue the cache
        (0..T-1 without one); without `mask`, attention is causal over cache + x. A given `mask`
        (T, S) is True where query t may attend key s of the S = cache length + T keys."""
        T = x.shape[1]
        if pos is None:
            pos = cache.positions(T, x.device) if cache is not None else torch.arange(T, device=x.device)
        rot = rope_angles(pos, self.cfg.n_embd // self.cfg.n_head, self.cfg.rope_theta)
        for i, block in enumerate(self.blocks):
            x = block(x, rot, mask, cache, i)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def make_cache(self, batch_size: int, max_len: int, device, dtype=torch.float32, static: bool = False) -> KVCache:
        return (StaticKVCache if static else KVCache)(self.cfg, batch_size, max_len, device, dtype)


class TreeRollout:
    """P continuations of every row, rolled out in parallel over one KV cache (BrierLM's samples).

    The prefix (B, C, d) runs once; `hidden` holds its states, and position s - 1 conditions a
    continuation that starts at s, for each s in `starts` (P,). Each `step` feeds one new input per
    continuation (B, P, d) and returns their hidden states (B, P, d). A tree mask lets step j's query
    of continuation p see the prefix keys < starts[p] and its own j earlier inputs, nothing else: the
    same result as running each continuation alone after its own prefix (tested), at one backbone
    call per step for all P. Positions continue each prefix (RoPE at starts[p] + j)."""

    def __init__(self, backbone: 'Backbone', prefix: torch.Tensor, starts: torch.Tensor, n_steps: int,
                 dtype: torch.dtype = torch.float32):
        B, C, _ = prefix.shape
        P = starts.shape[0]
        self.backbone, self.starts, self.steps = backbone, starts, 0
        self.cache = backbone.make_cache(B, C + (n_steps - 1) * P, prefix.device, dtype)
        self.hidden = backbone(prefix, cache=self.cache)                                       # (B, C, d)
        self.ctx_mask = torch.arange(C, device=prefix.device)[None, :] < starts[:, None]        # (P, C)
        self.eye = torch.eye(P, dtype=torch.bool, device=prefix.device)                        # (P, P)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        mask = torch.cat([self.ctx_mask] + [self.eye] * self.steps, dim=1)                      # (P, C + steps P)
        return self.backbone(x, cache=self.cache, pos=self.starts + self.steps - 1, mask=mask)  # (B, P, d)


def init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
