"""BrierLM against training time for several runs on the same axes (the README's "Making CALM learn
at small scale" plot), from the logs train.py writes.

    python experiments/learning_curves.py --runs=out/tiny_bytes,out/tiny_bytes_gpt --out=docs/learning_curves.png

For each run folder, the {model}.jsonl log gives the validation BrierLM measured during training
(`--brier_blocks` blocks, a quick estimate) at every evaluation, and the training throughput logged
every `--log_interval` steps. Training time at step i is i times the seconds per step at the run's
90th-percentile throughput: the time the run takes on an otherwise idle machine (a shared machine
slows some intervals down, some by 10x; the fast intervals are the idle ones). The final point is the full evaluation of eval.py when the folder holds
its JSON as eval_val.json.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from calm_min.config import ConfigError, run_cli  # noqa: E402
from experiments.plotting import check_plot_path, pyplot, save  # noqa: E402


@dataclasses.dataclass
class Config:
    path_fields = ('runs', 'out')  # not an option: the flags naming paths
    runs: str = ''                     # comma-separated run folders (each holds gpt.jsonl or calm.jsonl)
    labels: str = ''                   # comma-separated labels (default: folder names)
    out: str = 'docs/learning_curves.png'

    def validate(self):
        if not self.runs:
            raise ConfigError("--runs: give one or more run folders, comma-separated")


def curve(folder: Path) -> dict:
    """{'kind', 'sec_per_step', 'points': [(seconds, brierlm), ...], 'final': eval.py's figures or None}."""
    logs = [p for p in (folder / 'calm.jsonl', folder / 'gpt.jsonl') if p.is_file()]
    if not logs:
        raise ConfigError(f"{folder} holds no calm.jsonl or gpt.jsonl")
    recs = [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]
    train = [r for r in recs if r['kind'] == 'train']
    fast = statistics.quantiles([r['tok_per_s'] for r in train], n=10)[-1]   # 90th percentile of throughput
    sec_per_step = _tokens_per_step(folder, logs[0].stem) / fast
    points = [(r['iter'] * sec_per_step, r['val_brierlm']) for r in recs if r['kind'] == 'eval' and 'val_brierlm' in r]
    final = None
    if (folder / 'eval_val.json').is_file():
        final = json.loads((folder / 'eval_val.json').read_text())['results']
    return {'kind': logs[0].stem, 'sec_per_step': sec_per_step, 'points': points, 'final': final,
            'steps': train[-1]['iter']}


def _tokens_per_step(folder: Path, kind: str) -> int:
    """Text tokens per training step, as train.py counts them, from the run's own checkpoint config."""
    import torch
    ck = torch.load(folder / f'{kind}.pt', map_location='cpu', weights_only=True)
    tc = ck['train_config']
    step = 1 if kind == 'gpt' else ck['ae_config']['chunk_size']
    return tc['batch_size'] * tc['grad_accum'] * (tc['block_size'] // step * step)


def main(cfg: Config) -> dict:
    folders = [Path(p) for p in cfg.runs.split(',')]
    labels = cfg.labels.split(',') if cfg.labels else [f.name for f in folders]
    if len(labels) != len(folders):
        raise ConfigError(f"--labels names {len(labels)} runs, --runs {len(folders)}")
    check_plot_path(cfg.out, 'out')
    curves = {lab: curve(f) for lab, f in zip(labels, folders)}
    for lab, c in curves.items():
        fin = c['final']
        print(f"{lab:40s} {c['kind']:4s} {c['steps']:5d} steps  {c['sec_per_step']:.3f} s/step  "
              f"{c['steps'] * c['sec_per_step'] / 60:5.1f} min  "
              + (f"val BrierLM {fin['brierlm']:.2f} +- {fin['brierlm_se']:.2f}" if fin else ''))
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for lab, c in curves.items():
            xs = [t / 60 for t, _ in c['points']]
            ys = [b for _, b in c['points']]
            style = '--' if c['kind'] == 'gpt' else '-'
            line, = ax.plot(xs, ys, style + 'o', ms=3, label=lab)
            if c['final']:
                ax.errorbar([c['steps'] * c['sec_per_step'] / 60], [c['final']['brierlm']],
                            yerr=[c['final']['brierlm_se']], fmt='s', color=line.get_color(), capsize=3)
        ax.set_xlabel('training time, minutes (2 CPU cores, idle-machine estimate)')
        ax.set_ylabel('validation BrierLM')
        ax.legend(fontsize=7)
        ax.set_title('circles: quick estimate during training; squares: eval.py (64 blocks)', fontsize=8)
        save(fig, Path(cfg.out))
    return curves


def cli(argv: list[str]) -> int:
    return run_cli(main, Config, argv, (ConfigError, OSError, ValueError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
