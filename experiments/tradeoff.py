"""The accuracy/diversity trade-off of temperature sampling at small scale (docs/method.md section 6; the paper's
comparison of CALM's batch sampler with a Transformer's softmax temperature).

    python experiments/tradeoff.py      # the quick start's CALM and the baseline trained as long
    python experiments/tradeoff.py --calm=out/tiny/calm.pt --gpt=out/tiny/gpt.pt   # config/tiny.py's

At the same validation positions (blocks of --context tokens, the chunk starting at every multiple of
K = 4 tokens), each setting draws two independent continuations a, b per position and reports
accuracy = mean 1[a = y] (the accuracy term of the Brier score) and collision = mean 1[a = b], for
the first token and for the whole 4-token chunk. CALM: batch sampler (Algorithm 2) at T = 1/2 and
1/3 with pools of N in {1, 10, 50, 200} head samples, and plain T = 1 sampling. Baseline: softmax
temperature T in {1.0, 0.8, 0.6, 0.5}, the 4 tokens sampled one after another. Writes
out/tradeoff/results.json and, with matplotlib, tradeoff.png.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from calm_min.checkpoint import CheckpointError, load_model  # noqa: E402
from calm_min.device import pick_device  # noqa: E402
from experiments.plotting import pyplot, save  # noqa: E402
from calm_min.config import ConfigError, run_cli  # noqa: E402
from calm_min.data import DataError, eval_blocks, load_corpus  # noqa: E402
from calm_min.sampling import Sampler  # noqa: E402


@dataclasses.dataclass
class Config:
    path_fields = ('calm', 'gpt', 'out_dir')  # not an option: the flags naming paths
    calm: str = 'out/tiny_bytes/calm.pt'       # a CALM checkpoint (this: the quick start's)
    gpt: str = 'out/tiny_bytes_gpt/gpt.pt'     # a baseline on the same tokenizer (the README's command)
    split: str = 'val'
    context: int = 256
    max_blocks: int = 16
    seed: int = 0
    out_dir: str = 'out/tradeoff'
    device: str = 'auto'

    def validate(self):
        if self.context < 8 or self.max_blocks < 0:
            raise ConfigError(f"--context must be >= 8 (two chunks) and --max_blocks >= 0 (0: all); got "
                              f"{self.context} and {self.max_blocks}")


def scores(a, b, y) -> dict:
    return {'acc_1': (a[:, 0] == y[:, 0]).double().mean().item(), 'collision_1': (a[:, 0] == b[:, 0]).double().mean().item(),
            'acc_4': (a == y).all(-1).double().mean().item(), 'collision_4': (a == b).all(-1).double().mean().item()}


CALM_SETTINGS = [(1.0, 1)] + [(T, N) for T in (1 / 2, 1 / 3) for N in (1, 10, 50, 200)]   # (T, pool size N)
GPT_SETTINGS = [(1.0, None), (0.8, None), (0.6, None), (0.5, None)]


@torch.no_grad()
def rows(name, model, blocks, g, settings) -> list[dict]:
    out = []
    for T, N in settings:
        cont = model.continuations(blocks, Sampler(temperature=T, num_candidates=N or 1), generator=g)
        a, b = cont['samples'].flatten(1, 2)                                  # (P, 4) each
        out.append({'model': name, 'T': round(T, 4), 'N': N, **scores(a, b, cont['target'].flatten(0, 1))})
    return out


def main(cfg: Config) -> dict:
    device = pick_device(cfg.device)
    calm, ck = load_model(cfg.calm, ('calm',), device)
    gpt, gk = load_model(cfg.gpt, ('gpt',), device)
    if ck['tokenizer'] != gk['tokenizer']:
        raise ConfigError("the two checkpoints use different tokenizers: they cannot be compared on the same tokens")
    tc = ck['train_config']
    corpus = load_corpus(tc['dataset'], tc['tokenizer'], tc['vocab_size'], tc['data_dir'], verbose=False)
    blocks = eval_blocks(corpus.tokens(cfg.split), cfg.context, cfg.max_blocks).to(device)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    results = rows('calm', calm, blocks, g, CALM_SETTINGS) + rows('gpt', gpt, blocks, g, GPT_SETTINGS)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {'protocol': f'{cfg.split}, {len(blocks)} blocks of {cfg.context} tokens, chunk starts every 4 tokens',
              'checkpoints': {'calm': cfg.calm, 'calm_step': ck.get('step'), 'gpt': cfg.gpt, 'gpt_step': gk.get('step')},
              'seed': cfg.seed, 'rows': results}
    (out / 'results.json').write_text(json.dumps(report, indent=1))
    print('| model | T | N | accuracy (1 token) | collision (1 token) | accuracy (4 tokens) | collision (4 tokens) |')
    print('|---|---|---|---|---|---|---|')
    for r in results:
        print(f"| {r['model']} | {r['T']:.3g} | {r['N'] or '-'} | {r['acc_1']:.3f} | {r['collision_1']:.3f} | "
              f"{r['acc_4']:.4f} | {r['collision_4']:.4f} |")
    plt = pyplot()
    if plt is None:
        return report
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, sel in (('CALM T=1/2 (N=1,10,50,200)', lambda r: r['model'] == 'calm' and r['T'] == 0.5),
                       ('CALM T=1/3 (N=1,10,50,200)', lambda r: r['model'] == 'calm' and abs(r['T'] - 1 / 3) < 1e-3),
                       ('baseline T=1,0.8,0.6,0.5', lambda r: r['model'] == 'gpt')):
        pts = [r for r in results if sel(r)]
        ax.plot([1 - r['collision_1'] for r in pts], [r['acc_1'] for r in pts], 'o-', label=label)
    ax.set_xlabel('diversity: 1 - collision rate (first token)')
    ax.set_ylabel('accuracy (first token)')
    ax.legend(fontsize=8)
    save(fig, out / 'tradeoff.png')
    return report


def cli(argv: list[str]) -> int:
    return run_cli(main, Config, argv, (ConfigError, CheckpointError, DataError, OSError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
