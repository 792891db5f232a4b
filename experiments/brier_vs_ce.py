"""Paper check at small scale (docs/method.md section 5): over baseline checkpoints of several sizes and training
lengths, does BrierLM track cross-entropy? The paper found Pearson -0.966 and Spearman -0.991.

    python experiments/brier_vs_ce.py                       # trains the checkpoints, evaluates, plots
    python experiments/brier_vs_ce.py --train=false         # re-evaluate existing checkpoints

Trains two baseline sizes on the bundled corpus (BPE 1024, as config/tiny.py), keeping a checkpoint
at every evaluation, then scores every checkpoint on the same validation blocks with eval.py's
protocol. Writes out/brier_vs_ce/results.json and, with matplotlib installed, brier_vs_ce.png.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import eval as evaluate  # noqa: E402
import train  # noqa: E402
from experiments.plotting import pyplot, save  # noqa: E402
from calm_min.checkpoint import CheckpointError  # noqa: E402
from calm_min.config import ConfigError, EvalConfig, TrainConfig, parse_args, run_cli  # noqa: E402
from calm_min.data import DataError  # noqa: E402

SIZES = {'small': dict(n_layer=2, n_head=2, n_embd=128), 'medium': dict(n_layer=4, n_head=4, n_embd=256)}


@dataclasses.dataclass
class Config:
    path_fields = ('out_dir',)  # not an option: the flags naming paths
    out_dir: str = 'out/brier_vs_ce'
    train: bool = True
    max_iters: int = 600
    eval_interval: int = 150
    context: int = 128
    max_blocks: int = 96

    def validate(self):
        for n in ('max_iters', 'eval_interval', 'context', 'max_blocks'):
            if getattr(self, n) <= 0:
                raise ConfigError(f"--{n} must be positive, got {getattr(self, n)}")


def pearson(x, y):
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def ranks(v):
    return torch.tensor(v).argsort().argsort().tolist()


def main(cfg: Config) -> dict:
    out = Path(cfg.out_dir)
    if cfg.train:
        for name, size in SIZES.items():
            tc = dataclasses.replace(parse_args([str(ROOT / 'config' / 'tiny.py')], TrainConfig), model='gpt', out_dir=str(out / name),
                                     overwrite=True, keep_checkpoints=True, block_size=cfg.context, batch_size=8,
                                     max_iters=cfg.max_iters, eval_interval=cfg.eval_interval, brier_blocks=0,
                                     num_samples=0, **size)
            train.main(tc)
    ckpts = sorted(out.glob('*/gpt_*.pt'))
    if len(ckpts) < 2:
        raise ConfigError(f"{out} holds {len(ckpts)} checkpoints */gpt_*.pt, and a correlation needs at least 2: "
                          f"run without --train=false first, or pass the --out_dir that holds them")
    rows = []
    for ckpt in ckpts:
        ec = EvalConfig(ckpt=str(ckpt), split='val', context=cfg.context, max_blocks=cfg.max_blocks, bootstrap=200)
        r = evaluate.main(ec)['results']
        rows.append({'checkpoint': str(ckpt), 'cross_entropy': r['cross_entropy'], 'brierlm': r['brierlm'],
                     'brierlm_se': r['brierlm_se'], **{f'brier{n}': r[f'brier{n}'] for n in range(1, 5)}})
    ce = [r['cross_entropy'] for r in rows]
    lm = [r['brierlm'] for r in rows]
    summary = {'checkpoints': len(rows), 'pearson': pearson(ce, lm), 'spearman': pearson(ranks(ce), ranks(lm)),
               'protocol': f'SOTU val, {cfg.max_blocks} blocks of {cfg.context} tokens, 4-grams every 4 tokens',
               'rows': rows}
    (out / 'results.json').write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != 'rows'}, indent=1))
    for r in rows:
        print(f"{r['checkpoint']:40s} CE {r['cross_entropy']:.3f}  BrierLM {r['brierlm']:.2f} ± {r['brierlm_se']:.2f}")
    plt = pyplot()
    if plt is None:
        return summary
    fig, ax = plt.subplots(figsize=(5, 4))
    for name in SIZES:
        pts = [r for r in rows if f'/{name}/' in r['checkpoint']]
        ax.errorbar([r['cross_entropy'] for r in pts], [r['brierlm'] for r in pts],
                    yerr=[r['brierlm_se'] for r in pts], fmt='o-', label=name, capsize=3)
    ax.set_xlabel('validation cross-entropy (nats/token)')
    ax.set_ylabel('BrierLM')
    ax.set_title(f"Pearson {summary['pearson']:.3f}, Spearman {summary['spearman']:.3f}")
    ax.legend()
    save(fig, out / 'brier_vs_ce.png')
    return summary


def cli(argv: list[str]) -> int:
    return run_cli(main, Config, argv, (ConfigError, CheckpointError, DataError, train.TrainingDiverged, OSError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
