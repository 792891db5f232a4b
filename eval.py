"""Evaluate a checkpoint and print JSON (also written to --out).

    python eval.py --ckpt=out/tiny/calm.pt --split=test        # BrierLM (+ CE and bits/byte for gpt)
    python eval.py --ckpt=out/tiny/ae.pt --split=val           # autoencoder reconstruction
    python eval.py --ckpt=out/tiny/calm.pt --data=my_text.jsonl   # any held-out text: .txt, folder, .jsonl

By default the text is a split of the corpus the checkpoint was trained on; --data scores any other
text, tokenized with the checkpoint's own tokenizer.

Protocol (recorded in the output): the split is cut into consecutive blocks of --context tokens
(--max_blocks of them, spread evenly); CALM and the baseline see exactly the same blocks and are
scored on the same 4-grams (those starting at every multiple of 4 tokens, i.e. CALM's chunk
boundaries for K = 4), each with all the block's tokens before it as context. A --context longer
than the model's training window is allowed (it measures extrapolation) and noted on stderr.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from calm_min.brierlm import evaluate_brier
from calm_min.checkpoint import CheckpointError, check_tokenizer, load_model
from calm_min.config import ConfigError, EvalConfig, run_cli
from calm_min.data import ChunkIndex, DataError, eval_blocks, load_corpus, tokenize_text
from calm_min.device import pick_device
from calm_min.tokenizer import Tokenizer
from train import check_output_file

NOISE_LEVELS = (0.1, 0.2, 0.3, 0.5, 1.0)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


@torch.no_grad()
def eval_lm(model, blocks, cfg: EvalConfig, bytes_per_token: float) -> dict:
    """BrierLM on blocks (n, C), with CE and bits per byte (baseline) or the energy loss by context (CALM)."""
    dev = next(model.parameters()).device
    out = {}
    if model.kind == 'gpt':
        nll, n = 0.0, 0
        for i in range(0, len(blocks), cfg.batch_size):
            x = blocks[i:i + cfg.batch_size].to(dev)
            logits, _ = model(x[:, :-1])
            nll += F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction='sum').item()
            n += x[:, 1:].numel()
        out['cross_entropy'] = nll / n
        out['bits_per_byte'] = nll / n / math.log(2) / bytes_per_token
        out['ce_tokens'] = n
    else:
        out.update(eval_context(model, blocks, cfg))
    out.update(evaluate_brier(model, blocks, cfg.batch_size, exact=True, seed=cfg.seed, n_boot=cfg.bootstrap))
    return out


@torch.no_grad()
def eval_context(model, blocks: torch.Tensor, cfg: EvalConfig) -> dict:
    """CALM only: its energy loss (the training objective, lower is better) on the blocks three ways:
    with the full context; with each position's context cut to its own chunk (all a chunk-bigram
    model sees); and with each block's hidden states paired with the next block's targets (a context
    from other text). The gaps say how much context the model uses, also where BrierLM is 0."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    sums, n, n_other = {'full_context': 0.0, 'last_chunk_only': 0.0, 'other_context': 0.0}, 0, 0
    for i in range(0, len(blocks), cfg.batch_size):
        x = model.chunks(blocks[i:i + cfg.batch_size].to(dev))               # (B, L, K)
        B, L, K = x.shape
        y, _ = model.target_latents(x[:, 1:], g)                             # (M, B, L-1, l)
        h = model.hidden(x)[:, :-1]                                          # (B, L-1, d)
        h_last = model.hidden(x[:, :-1].reshape(B * (L - 1), 1, K)).view(B, L - 1, -1)
        for name, hh in (('full_context', h), ('last_chunk_only', h_last), ('other_context', h.roll(1, 0))):
            if name == 'other_context' and B < 2:
                continue
            sums[name] += model.energy(hh, y, g)[0].sum().item()
        n += B * (L - 1)
        n_other += B * (L - 1) if B >= 2 else 0
    out = {'energy_loss_full_context': sums['full_context'] / n,
           'energy_loss_last_chunk_only': sums['last_chunk_only'] / n, 'energy_loss_positions': n}
    if n_other:
        out['energy_loss_other_context'] = sums['other_context'] / n_other
    return out


@torch.no_grad()
def eval_ae(ae, chunks: torch.Tensor, cfg: EvalConfig) -> dict:
    """Reconstruction of chunks (n, K): z = mu and z sampled, per-dimension KL, robustness to noise."""
    dev = next(ae.parameters()).device
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    sums: dict = {}
    kl_dim = torch.zeros(ae.cfg.latent_size, dtype=torch.float64)
    bs = 4096
    for i in range(0, len(chunks), bs):
        x = chunks[i:i + bs].to(dev)
        mu, log_sigma = ae.encode(x)
        kl, _ = ae.kl_terms(mu, log_sigma)
        kl_dim += kl.double().sum(0).cpu()
        sums['sigma'] = sums.get('sigma', 0.0) + log_sigma.exp().mean(-1).sum().item()
        zs = {'mu': mu, 'sampled': ae.sample_latent(mu, log_sigma, generator=g)}
        for s in NOISE_LEVELS:
            zs[f'noise_{s}'] = mu + s * torch.randn(mu.shape, generator=g, device=dev)
        for name, z in zs.items():
            ok = ae.decode(z) == x                                            # (b, K)
            sums[f'{name}_tok'] = sums.get(f'{name}_tok', 0) + ok.sum().item()
            sums[f'{name}_chunk'] = sums.get(f'{name}_chunk', 0) + ok.all(-1).sum().item()
    n, K = chunks.shape
    kl_dim /= n
    return {
        'token_accuracy_mu': sums['mu_tok'] / (n * K), 'chunk_exact_mu': sums['mu_chunk'] / n,
        'token_accuracy_sampled': sums['sampled_tok'] / (n * K), 'chunk_exact_sampled': sums['sampled_chunk'] / n,
        'mean_sigma': sums['sigma'] / n,
        'kl_per_dim': [round(v, 4) for v in kl_dim.tolist()],
        'kl_total': float(kl_dim.sum()),
        'collapsed_dims': int((kl_dim < 0.01).sum()),
        'noise_robustness': {str(s): {'token_accuracy': sums[f'noise_{s}_tok'] / (n * K),
                                      'chunk_exact': sums[f'noise_{s}_chunk'] / n} for s in NOISE_LEVELS},
        'chunks': n,
    }


def main(cfg: EvalConfig) -> dict:
    device = pick_device(cfg.device)
    check_report_path(cfg.out)                                # fail before the work, not after it
    model, ckpt = load_model(cfg.ckpt, device=device)
    tc = ckpt['train_config']
    protocol = {'checkpoint': str(cfg.ckpt), 'kind': ckpt['kind'], 'checkpoint_sha256': file_sha256(cfg.ckpt),
                'step': ckpt['step'], 'train_flops': ckpt.get('train_flops'), 'seed': cfg.seed,
                'tokenizer': ckpt['tokenizer']['kind'],
                'vocab_size': ckpt['tokenizer']['vocab_size']}
    if cfg.data:                                              # any text, with the checkpoint's own tokenizer
        tok = Tokenizer.from_str(ckpt['tokenizer_json'], ckpt['tokenizer']['kind'])
        tokens, doc_starts, n_bytes = tokenize_text(cfg.data, tok)
        eot_id, bytes_per_token = tok.eot_id, n_bytes / len(tokens)
        protocol.update({'data': cfg.data, 'data_sha256': file_sha256(cfg.data) if Path(cfg.data).is_file() else None,
                         'data_tokens': len(tokens)})
    else:                                                     # a split of the training corpus
        corpus = load_corpus(tc['dataset'], tc['tokenizer'], tc['vocab_size'], tc['data_dir'], verbose=False)
        check_tokenizer(ckpt, corpus.tokenizer.identity, cfg.ckpt)
        tokens, doc_starts = corpus.tokens(cfg.split), corpus.doc_starts(cfg.split)
        eot_id, bytes_per_token = corpus.tokenizer.eot_id, corpus.bytes_per_token(cfg.split)
        protocol.update({'dataset': tc['dataset'], 'split': cfg.split})
    if model.kind == 'ae':
        idx = ChunkIndex(tokens, doc_starts, model.cfg.chunk_size, eot_id)
        n = idx.total if not cfg.max_blocks else min(idx.total, cfg.max_blocks * cfg.context // model.cfg.chunk_size)
        ids = torch.linspace(0, idx.total - 1, n).round().long()
        protocol['packing'] = 'documents start on chunk boundaries, tails padded with end-of-text'
        result = eval_ae(model, idx.chunks(ids), cfg)
    else:
        K = model.tokens_per_step if model.tokens_per_step > 1 else 4   # 4-grams start at chunk boundaries
        if cfg.context % K:
            raise ConfigError(f"--context={cfg.context} must be a multiple of the chunk size {K}")
        need = (1 + -(-4 // K)) * K                          # one step of context and 4 tokens to score
        if cfg.context < need:
            raise ConfigError(f"--context={cfg.context} leaves nothing to score: BrierLM needs {K} tokens of "
                              f"context and 4 to predict; use --context >= {need}")
        if cfg.context > tc['block_size']:
            print(f"note: --context={cfg.context} is longer than the {tc['block_size']} tokens the model was trained "
                  f"on; positions beyond them score its extrapolation", file=sys.stderr)
        blocks = eval_blocks(tokens, cfg.context, cfg.max_blocks)
        protocol.update({'context_tokens': cfg.context, 'trained_block_size': tc['block_size'],
                         'context_positions': cfg.context // model.tokens_per_step,
                         'blocks': len(blocks), 'ngram_starts': f'every {K} tokens from token {K}'})
        result = eval_lm(model, blocks, cfg, bytes_per_token)
    return print_report({'protocol': protocol, 'results': result}, cfg.out)


def check_report_path(out: str):
    """Before any work: --out (if given) can be written, replacing at most an earlier report."""
    if out:
        check_output_file(out, 'out', 'a JSON report (a checkpoint? data?)', (b'{',), 'report.json')


def print_report(report: dict, out: str = '') -> dict:
    """Print a JSON report and, with `out`, also write it there."""
    text = json.dumps(report, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + '\n')
    return report


def cli(argv: list[str]) -> int:
    return run_cli(main, EvalConfig, argv, (ConfigError, DataError, CheckpointError, OSError, ValueError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
