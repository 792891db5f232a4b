"""Analytic FLOPs of the baseline and of CALM, by part (docs/method.md sections 1-4).

Counted as `torch.utils.flop_counter.FlopCounterMode` counts (and tested against it): 2 FLOPs per
multiply-add of every matrix product, attention as 4 * T * d per query token and layer over T keys
(no saving for causality), nothing for norms, activations, embeddings or the loss's elementwise work.
The energy loss's pairwise distances (N (M + N) l multiply-adds per position) are given apart, as
`energy_loss`, and left out of 'training' (FlopCounterMode sees the sample-target ones, which are
matrix products, and not the sample-sample ones, which go through cdist).

Training FLOPs are 3x the forward FLOPs of the trained parts (the backward pass costs about twice the
forward) plus 1x for the frozen autoencoder's encoder, which only makes CALM's targets. For CALM the
3x counts one product that backward never forms, the input gradient of the energy head's first
layer (its input, the noise, needs none): well under 1% of a step (tests/test_flops.py).
"""
from __future__ import annotations

from .autoencoder import AEConfig
from .backbone import BackboneConfig


def backbone_forward(bb: BackboneConfig, context: int) -> dict:
    """Per position, with `context` keys attended: the matrix products and the attention."""
    d, h = bb.n_embd, bb.hidden
    return {'attention_proj': bb.n_layer * 2 * 4 * d * d,          # qkv (3 d^2) and output (d^2)
            'attention_scores': bb.n_layer * 4 * context * d,
            'mlp': bb.n_layer * 2 * 3 * d * h}


def gpt_forward(bb: BackboneConfig, vocab_size: int, context: int) -> dict:
    """The baseline: forward FLOPs per token, by part."""
    return {**backbone_forward(bb, context), 'lm_head': 2 * bb.n_embd * vocab_size}


def ae_encoder(ae: AEConfig) -> int:
    d, h, K, nb = ae.dim, ae.hidden, ae.chunk_size, ae.n_blocks
    return K * nb * 6 * d * h + 2 * K * d * d + nb * 6 * d * h + 2 * d * 2 * ae.latent_size


def ae_decoder(ae: AEConfig) -> int:
    d, h, K, nb = ae.dim, ae.hidden, ae.chunk_size, ae.n_blocks
    return (2 * ae.latent_size * d + nb * 6 * d * h + 2 * d * K * d + K * nb * 6 * d * h
            + K * 2 * d * ae.vocab_size)


def ae_per_token(ae: AEConfig) -> dict:
    """The autoencoder stage, per token: 'inference' is one chunk's encoder and decoder (forward),
    'training' 3x that (the chunk's reconstruction loss trains both)."""
    fwd = {'encoder': ae_encoder(ae), 'decoder': ae_decoder(ae)}
    K = ae.chunk_size
    return {'inference': sum(fwd.values()) / K, 'inference_parts': {k: v / K for k, v in fwd.items()},
            'training': 3 * sum(fwd.values()) / K}


def head_forward(d: int, latent_size: int, noise_size: int, n_blocks: int, n_samples: int) -> int:
    """One position's condition (computed once) and n_samples samples."""
    per_position = 2 * d * d + n_blocks * 2 * d * d                          # cond_in; each block's in_c
    per_sample = 2 * noise_size * d + n_blocks * (2 + 2 + 4 + 2) * d * d + 2 * d * d + 2 * d * latent_size
    return per_position + n_samples * per_sample


def calm_forward(bb: BackboneConfig, ae: AEConfig, context: int, head_blocks: int, noise_size: int,
                 n_samples: int) -> dict:
    """CALM: forward FLOPs per chunk position (K tokens), by part, with n_samples head samples."""
    d, K = bb.n_embd, ae.chunk_size
    return {'compress': 2 * K * d * 2 * d + 2 * 2 * d * d, **backbone_forward(bb, context),
            'energy_head': head_forward(d, ae.latent_size, noise_size, head_blocks, n_samples)}


def calm_per_token(bb: BackboneConfig, ae: AEConfig, context: int, head_blocks: int = 4, noise_size: int = 64,
                   n_samples: int = 8, n_targets: int = 100, aux_ce: bool = False) -> dict:
    """Per text token: 'inference' (one head sample and the AE decoder per chunk, what generation
    costs), 'training' (3x the trained parts with N samples, + the AE encoder for the targets, + the
    aux head if on) and the energy loss's distances apart, each with its parts."""
    K = ae.chunk_size
    inf = {**calm_forward(bb, ae, context, head_blocks, noise_size, 1), 'ae_decoder': ae_decoder(ae)}
    trn = {k: 3 * v for k, v in calm_forward(bb, ae, context, head_blocks, noise_size, n_samples).items()}
    trn['ae_encoder_targets'] = ae_encoder(ae)
    if aux_ce:
        trn['aux_head'] = 3 * 2 * bb.n_embd * K * ae.vocab_size
    energy = 2 * n_samples * (n_targets + n_samples) * ae.latent_size
    return {'inference': sum(inf.values()) / K, 'inference_parts': {k: v / K for k, v in inf.items()},
            'training': sum(trn.values()) / K, 'training_parts': {k: v / K for k, v in trn.items()},
            'energy_loss': energy / K}


def gpt_per_token(bb: BackboneConfig, vocab_size: int, context: int) -> dict:
    fwd = gpt_forward(bb, vocab_size, context)
    return {'inference': sum(fwd.values()), 'inference_parts': fwd, 'training': 3 * sum(fwd.values())}

