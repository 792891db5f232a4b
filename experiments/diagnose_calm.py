"""Where does a small CALM stop learning? Diagnostics for any CALM checkpoint (docs/method.md sections
3-4; the README's "Making CALM learn at small scale").

    python experiments/diagnose_calm.py --ckpt=out/tiny/calm.pt
    python experiments/diagnose_calm.py --ckpt=out/tiny_bytes/calm.pt --out=out/tiny_bytes/diagnose.json

1. Headroom, from the data and the frozen autoencoder alone. For an oracle that knows the true
   conditional distribution Q of the next chunk's latent, the expected energy loss is E||Y - Y'||
   with Y, Y' independent draws of Q (alpha = 1). We estimate it for Q conditioned ever more finely:
   the marginal of next chunks; next chunks sharing their first token (what knowing one token buys);
   next chunks after the same previous chunk (a chunk-bigram oracle); the same chunk (posterior noise
   only, the floor). Y and Y' are independent posterior draws of two different positions of a group
   (the same position for the floor), so groups of one position are skipped.
2. The model on the same validation positions: its energy loss split into fidelity E||x - y|| and
   diversity E||x - x'||; the head's sample spread against the target spread; the distance from a
   head sample to the nearest latent (mu) of a training chunk, against the same for a posterior draw
   of the true chunk; how often a head sample decodes to a chunk that occurs in the training data;
   and all of it again with each position's hidden state replaced by another block's.
3. A linear probe from the frozen backbone's hidden state to the next chunk's first token (trained
   on training positions, scored on validation by its exact Brier-1 and accuracy), beside a unigram
   predictor: does the backbone hold the information the head fails to use?
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from calm_min.checkpoint import CheckpointError, check_tokenizer, load_model  # noqa: E402
from calm_min.config import ConfigError, run_cli  # noqa: E402
from calm_min.data import DataError, eval_blocks, load_corpus  # noqa: E402
from calm_min.device import pick_device  # noqa: E402
from eval import check_report_path, print_report  # noqa: E402


@dataclasses.dataclass
class Config:
    path_fields = ('ckpt', 'out')  # not an option: the flags naming paths
    ckpt: str = 'out/tiny/calm.pt'
    val_blocks: int = 64              # validation blocks of the training context length
    train_blocks: int = 1500          # training blocks for the probe and the bank of real chunks
    probe_steps: int = 300
    seed: int = 0
    device: str = 'auto'
    out: str = ''

    def validate(self):
        for name in ('val_blocks', 'train_blocks', 'probe_steps'):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------
# the measurements, each on plain tensors (tested on synthetic data)


def group_spread(y1: torch.Tensor, y2: torch.Tensor, groups: torch.Tensor, max_pairs: int = 200_000,
                 generator: torch.Generator | None = None) -> float:
    """E||Y - Y'|| over pairs of *different* positions i != j in the same group: y1, y2 (P, l) are two
    independent posterior draws per position, groups (P,) an integer key. Pairs are drawn uniformly
    among all such ordered pairs (up to max_pairs). NaN when no group has two positions."""
    order = torch.argsort(groups, stable=True)
    g = groups[order]
    _, counts = torch.unique_consecutive(g, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    big = counts >= 2
    if not big.any():
        return float('nan')
    counts, starts = counts[big], starts[big]
    weights = (counts * (counts - 1)).double()                                # ordered pairs per group
    pick = torch.multinomial(weights, max_pairs, replacement=True, generator=generator)   # (n,)
    c, s = counts[pick], starts[pick]
    i = (torch.rand(max_pairs, generator=generator) * c).long()
    j = (torch.rand(max_pairs, generator=generator) * (c - 1)).long()
    j = j + (j >= i).long()                                                   # j != i
    a, b = order[s + i], order[s + j]
    return float((y1[a] - y2[b]).norm(dim=-1).mean())


def energy_terms(samples: torch.Tensor, targets: torch.Tensor) -> dict:
    """samples (N, P, l), targets (M, P, l) -> fidelity E||x - y||, diversity E||x - x'|| (n != k),
    and the energy loss 2 fidelity - diversity (alpha = 1), each averaged over positions."""
    N = samples.shape[0]
    x, y = samples.transpose(0, 1).float(), targets.transpose(0, 1).float()   # (P, N, l), (P, M, l)
    fid = torch.cdist(x, y).mean((1, 2))                                      # (P,)
    div = torch.cdist(x, x).sum((1, 2)) / (N * (N - 1))                       # (P,), diagonal is 0
    return {'fidelity': float(fid.mean()), 'diversity': float(div.mean()), 'energy_loss': float((2 * fid - div).mean())}


def nearest_distance(z: torch.Tensor, bank: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """z (P, l), bank (B, l) -> the distance from each z to its nearest bank row (P,)."""
    return torch.cat([torch.cdist(z[i:i + batch].float(), bank.float()).min(-1).values
                      for i in range(0, len(z), batch)])


def in_set_rate(chunks: torch.Tensor, known: set) -> float:
    """The share of rows of chunks (P, K) that occur in `known`, a set of token tuples."""
    return sum(tuple(r) in known for r in chunks.tolist()) / max(1, len(chunks))


def train_probe(feats: torch.Tensor, labels: torch.Tensor, vocab_size: int, steps: int = 300,
                lr: float = 1e-2, seed: int = 0) -> torch.nn.Linear:
    """A linear softmax probe feats (n, d) -> labels (n,), full-batch AdamW with a little weight decay."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(feats.shape[1], vocab_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.cross_entropy(probe(feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe


def brier1_of_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Exact Brier-1 2 p(y) - sum p^2 and accuracy of explicit distributions probs (n, V)."""
    brier = 2 * probs.gather(-1, labels[:, None]).squeeze(-1) - probs.pow(2).sum(-1)
    return {'brier1': float(brier.mean()), 'accuracy': float((probs.argmax(-1) == labels).float().mean())}


# ----------------------------------------------------------------------------------------------
# the report


@torch.no_grad()
def hidden_and_chunks(model, blocks: torch.Tensor, batch: int = 32):
    """blocks (n, C) -> hidden states (P, d) at chunk positions 0..L-2, previous chunks (P, K) and
    next chunks (P, K), flattened over blocks."""
    hs, prev, nxt = [], [], []
    for i in range(0, len(blocks), batch):
        x = model.chunks(blocks[i:i + batch])                                # (b, L, K)
        hs.append(model.hidden(x)[:, :-1].flatten(0, 1).float())
        prev.append(x[:, :-1].flatten(0, 1))
        nxt.append(x[:, 1:].flatten(0, 1))
    return torch.cat(hs), torch.cat(prev), torch.cat(nxt)


def chunk_keys(chunks: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Each chunk (P, K) as one integer (a mixed-radix number; exact for V^K < 2^63)."""
    key = torch.zeros(len(chunks), dtype=torch.long)
    for k in range(chunks.shape[1]):
        key = key * vocab_size + chunks[:, k]
    return key


@torch.no_grad()
def head_report(model, h: torch.Tensor, nxt: torch.Tensor, bank: torch.Tensor, known: set,
                g: torch.Generator) -> dict:
    N = model.cfg.n_samples
    y, _ = model.target_latents(nxt, g)                                      # (M, P, l)
    x = model.head(h, N, g).float()                                           # (N, P, l)
    out = energy_terms(x, y)
    out['head_spread'] = out['diversity']
    out['target_spread_same_chunk'] = float((y[0] - y[1]).norm(dim=-1).mean())
    out['dist_head_to_nearest_real_latent'] = float(nearest_distance(x[0], bank).mean())
    out['decodes_to_a_training_chunk'] = in_set_rate(model.ae.decode(x[0]), known)
    out['decodes_to_the_true_chunk'] = float((model.ae.decode(x[0]) == nxt).all(-1).float().mean())
    return out


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    check_report_path(cfg.out)
    model, ckpt = load_model(cfg.ckpt, ('calm',), device)
    tc = ckpt['train_config']
    corpus = load_corpus(tc['dataset'], tc['tokenizer'], tc['vocab_size'], tc['data_dir'], verbose=False)
    check_tokenizer(ckpt, corpus.tokenizer.identity, cfg.ckpt)
    K, V = model.chunk_size, model.tok_emb.num_embeddings
    C = tc['block_size'] // K * K
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    val = eval_blocks(corpus.tokens('val'), C, cfg.val_blocks).to(device)
    train = eval_blocks(corpus.tokens('train'), C, cfg.train_blocks).to(device)
    h_val, prev_val, nxt_val = hidden_and_chunks(model, val)
    h_tr, _, nxt_tr = hidden_and_chunks(model, train)

    # 1. headroom from the data: E||Y - Y'|| under ever finer conditioning
    mu, log_sigma = model.ae.encode(nxt_val)
    y1 = model.ae.sample_latent(mu.float(), log_sigma.float(), generator=g)
    y2 = model.ae.sample_latent(mu.float(), log_sigma.float(), generator=g)
    P = len(nxt_val)
    headroom = {
        'marginal': group_spread(y1, y2, torch.zeros(P, dtype=torch.long), generator=g),
        'same_first_token': group_spread(y1, y2, nxt_val[:, 0].cpu(), generator=g),
        'same_previous_chunk': group_spread(y1, y2, chunk_keys(prev_val.cpu(), V), generator=g),
        'same_chunk_posterior_noise': float((y1 - y2).norm(dim=-1).mean()),
        'positions': P,
    }
    for k in range(1, K):
        headroom[f'same_token_{k + 1}'] = group_spread(y1, y2, nxt_val[:, k].cpu(), generator=g)

    # 2. the head, with its own context and with another block's
    bank_chunks = torch.unique(nxt_tr, dim=0)
    bank = model.ae.encode(bank_chunks)[0].float()                           # (B, l)
    known = {tuple(r) for r in bank_chunks.tolist()}
    L1 = C // K - 1
    other = h_val.view(-1, L1, h_val.shape[-1]).roll(1, 0).flatten(0, 1)      # another block's states
    model_rep = {'own_context': head_report(model, h_val, nxt_val, bank, known, g),
                 'other_context': head_report(model, other, nxt_val, bank, known, g),
                 'reference_posterior_draw': {
                     'dist_to_nearest_real_latent': float(nearest_distance(y1, bank).mean()),
                     'true_chunk_occurs_in_training_data': in_set_rate(nxt_val, known)}}

    # 3. a linear probe: hidden state -> the next chunk's first token
    with torch.enable_grad():
        probe = train_probe(h_tr.cpu(), nxt_tr[:, 0].cpu(), V, cfg.probe_steps, seed=cfg.seed)
    probe_rep = brier1_of_probs(F.softmax(probe(h_val.cpu()), -1).detach(), nxt_val[:, 0].cpu())
    unigram = torch.bincount(nxt_tr[:, 0].cpu(), minlength=V).double()
    uni_rep = brier1_of_probs((unigram / unigram.sum()).expand(P, -1), nxt_val[:, 0].cpu())
    probe_all = {'probe': probe_rep, 'unigram': uni_rep, 'train_positions': len(h_tr)}

    return print_report({'checkpoint': cfg.ckpt, 'chunk_size': K, 'context_tokens': C, 'headroom_E_dist': headroom,
                         'model': model_rep, 'linear_probe_first_token': probe_all}, cfg.out)


def cli(argv: list[str]) -> int:
    return run_cli(main, Config, argv, (ConfigError, CheckpointError, DataError, OSError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
