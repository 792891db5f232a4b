"""The compute-matched comparison (the paper's headline, section 5: CALM against a discrete Transformer
at equal training FLOPs): the baseline and CALM trained at several backbone sizes, each run for the
number of steps its training-FLOP budget buys, then scored with one protocol (eval.py, BrierLM on
validation and on Moby Dick). Plots BrierLM against training FLOPs and against inference FLOPs per
generated token.

    python experiments/compute_matched.py                                   # CPU: the README's table
    python experiments/compute_matched.py --dry_run=true                    # print the plan only
    python experiments/compute_matched.py --preset=config/gpu_small.py --sizes=8x512,12x768 \\
        --budgets=2e17,8e17 --out_dir=out/compute_matched_gpu               # the same study bigger, on a GPU
    python experiments/compute_matched.py --models=calm --train_flags=--chunk_size=2 \\
        --out_dir=out/compute_matched_k2 --also=docs/compute_matched.json   # CALM with K = 2, beside K = 4

Every size's runs share one budget; steps = budget / (analytic training FLOPs per step,
calm_min/flops.py), so the two models of a size get the same compute, and a model that is cheaper
per token sees more tokens. CALM's autoencoder (stage 1) is trained once and shared by all sizes;
its FLOPs are reported apart and added to CALM's total in the table and plot. Finished runs and
evaluations are kept (their files are found and reused), so an interrupted study resumes where it
stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from calm_min.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint  # noqa: E402
from calm_min.config import ConfigError, TrainConfig, parse_args, run_cli  # noqa: E402
from calm_min.data import DataError, load_corpus  # noqa: E402
from experiments.plotting import check_plot_path, pyplot, save  # noqa: E402
from train import build_model  # noqa: E402


@dataclasses.dataclass
class Config:
    path_fields = ('preset', 'out_dir', 'plot', 'also')  # not an option: the flags naming paths
    preset: str = 'config/tiny_bytes.py'   # the recipe (README, "Making CALM learn at small scale"); sizes and steps are set here
    sizes: str = '2x128,4x256'             # backbones, n_layer x n_embd (n_head = n_embd / 64); may recur
    budgets: str = '6e13,3e14'             # training FLOPs for each size's runs (the LM stage)
    models: str = 'gpt,calm'
    out_dir: str = 'out/compute_matched'
    train_flags: str = ''                  # further train.py flags for every run, e.g. '--device=cuda'
    eval_blocks: int = 64                  # eval.py --max_blocks, validation and test
    plot: str = 'docs/compute_matched.png'
    also: str = ''                         # results.json files of earlier studies, comma-separated: added to table and plot
                                           # (with --sizes= --budgets=: no runs, only their table and plot)
    dry_run: bool = False                  # print the plan (steps per run) and stop

    def validate(self):
        try:
            self.size_list(), self.budget_list()
        except ValueError:
            raise ConfigError(f"--sizes takes n_layer x n_embd pairs like 2x128,4x256 and --budgets numbers like "
                              f"6e13,3e14; got {self.sizes!r} and {self.budgets!r}") from None
        if len(self.size_list()) != len(self.budget_list()):
            raise ConfigError(f"--sizes names {len(self.size_list())} sizes but --budgets {len(self.budget_list())}")
        pairs = list(zip(self.size_list(), self.budget_list()))
        if len(set(pairs)) != len(pairs):
            raise ConfigError("--sizes and --budgets name one (size, budget) pair twice; "
                              "a size may recur with other budgets")
        if not self.size_list() and not self.also_list():
            raise ConfigError("--sizes and --budgets are empty: give runs to make, "
                              "or --also files to tabulate and plot")
        if any(b <= 0 for b in self.budget_list()):
            raise ConfigError("--budgets must be positive")
        if any(m not in ('gpt', 'calm') for m in self.models.split(',')):
            raise ConfigError(f"--models takes gpt and/or calm, comma-separated; got {self.models!r}")
        if not Path(self.preset).is_file():
            raise ConfigError(f"--preset {self.preset} is not a file")
        for f in self.also_list():
            if not Path(f).is_file():
                raise ConfigError(f"--also names {f}, which is not a file (a results.json of this script)")

    def also_list(self) -> list[str]:
        return [f for f in self.also.split(',') if f]

    def size_list(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in s.split('x')) for s in self.sizes.split(',') if s]

    def budget_list(self) -> list[float]:
        return [float(b) for b in self.budgets.split(',') if b]


def run(cmd: list[str], log: Path):
    print('$', shlex.join(cmd), flush=True)
    with open(log, 'w') as f:
        r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        sys.exit(f"error: the command above failed (exit {r.returncode}); its output is in {log}")


def finished(path: Path) -> bool:
    return path.is_file() and load_checkpoint(path).get('finished', False)


def plan(cfg: Config, tcfg: TrainConfig, ae_path: Path) -> list[dict]:
    """One entry per (size, model): its flags, steps and analytic FLOPs per token (an untrained
    autoencoder of the preset's config stands in for the real one: FLOPs depend on sizes only)."""
    tok = load_corpus(tcfg.dataset, tcfg.tokenizer, tcfg.vocab_size, tcfg.data_dir, verbose=False).tokenizer
    vocab = tok.vocab_size
    ae = build_model(dataclasses.replace(tcfg, model='ae'), vocab, tok.eot_id)
    runs = []
    for (n_layer, n_embd), budget in zip(cfg.size_list(), cfg.budget_list()):
        for kind in cfg.models.split(','):
            t = dataclasses.replace(tcfg, model=kind, n_layer=n_layer, n_embd=n_embd, n_head=max(1, n_embd // 64))
            model = build_model(t, vocab, ae.cfg.mask_id, ae)
            s = model.tokens_per_step
            tokens_per_step = t.batch_size * t.grad_accum * (t.block_size // s * s)
            f = model.flops_per_token(t.block_size)
            steps = max(1, round(budget / (f['training'] * tokens_per_step)))
            name = f'{kind}_{n_layer}x{n_embd}'
            if cfg.size_list().count((n_layer, n_embd)) > 1:      # a recurring size: one directory per budget
                name += f'_{budget:.3g}'.replace('+', '')
            runs.append({'name': name, 'model': kind, 'chunk_size': t.chunk_size if kind == 'calm' else 1,
                         'n_layer': n_layer, 'n_embd': n_embd, 'budget': budget,
                         'steps': steps, 'tokens': steps * tokens_per_step,
                         'params': sum(p.numel() for n, p in model.named_parameters() if not n.startswith('ae.')),
                         'train_flops_per_token': f['training'], 'inference_flops_per_token': f['inference'],
                         'flags': [f'--model={kind}', f'--n_layer={n_layer}', f'--n_embd={n_embd}',
                                   f'--n_head={t.n_head}', f'--max_iters={steps}', f'--eval_interval={steps}',
                                   f'--out_dir={Path(cfg.out_dir) / name}']
                                  + ([f'--ae_ckpt={ae_path}'] if kind == 'calm' else [])})
    return runs


def ae_train_flops(ae_path: Path) -> float:
    """The autoencoder stage: 3x the forward FLOPs of encoder and decoder per chunk, over its steps
    (computed here: checkpoints written before train.py counted the autoencoder's FLOPs record 0)."""
    ck = load_checkpoint(ae_path, ('ae',))
    ae = model_from_checkpoint(ck, ae_path)
    chunks = ck['train_config']['ae_batch_size'] * ck['step']
    return ae.flops_per_token()['training'] * ae.cfg.chunk_size * chunks


def main(cfg: Config) -> list[dict]:
    py = sys.executable
    flags = shlex.split(cfg.train_flags)
    tcfg = parse_args([cfg.preset, *flags], TrainConfig)
    check_plot_path(cfg.plot, 'plot')
    out = Path(cfg.out_dir)
    ae_path = out / 'ae' / 'ae.pt'
    runs = plan(cfg, tcfg, ae_path)
    if runs:
        out.mkdir(parents=True, exist_ok=True)
    for r in runs:
        print(f"{r['name']:14s} {r['params'] / 1e6:6.2f}M params  {r['steps']:6d} steps  {r['tokens'] / 1e6:7.1f}M tokens  "
              f"{r['train_flops_per_token'] / 1e6:6.1f} MFLOP/token training  budget {r['budget']:.3g}")
    if cfg.dry_run:
        return runs
    ae_flops = 0.0
    if any(r['model'] == 'calm' for r in runs):
        if not finished(ae_path):
            run([py, 'train.py', cfg.preset, *flags, '--model=ae', f'--out_dir={ae_path.parent}'], out / 'ae.log')
        ae_flops = ae_train_flops(ae_path)
        print(f"autoencoder stage: {ae_flops:.3g} training FLOPs (shared by every CALM run)")
    for r in runs:
        ckpt = out / r['name'] / f"{r['model']}.pt"
        if not finished(ckpt):
            run([py, 'train.py', cfg.preset, *flags, *r['flags']], out / f"{r['name']}.log")
        ck = load_checkpoint(ckpt)
        r['train_flops'] = ck['train_flops'] + (ae_flops if r['model'] == 'calm' else 0.0)
        r['ae_flops'] = ae_flops if r['model'] == 'calm' else 0.0
        dev = [f for f in flags if f.startswith('--device=')]
        for split in ('val', 'test'):
            path = out / r['name'] / f'eval_{split}.json'
            if not path.is_file():
                run([py, 'eval.py', f'--ckpt={ckpt}', f'--split={split}', f'--max_blocks={cfg.eval_blocks}',
                     f'--out={path}', *dev], out / f"{r['name']}_eval_{split}.log")
            res = json.loads(path.read_text())['results']
            r[f'{split}_brierlm'], r[f'{split}_brierlm_se'] = res['brierlm'], res['brierlm_se']
    if runs:
        (out / 'results.json').write_text(json.dumps(runs, indent=1))
    shown = [r for f in cfg.also_list() for r in json.loads(Path(f).read_text())] + runs
    print(table(shown))
    print(equivalence(shown))
    plot(shown, Path(cfg.plot))
    return runs


def label(r: dict) -> str:
    """'baseline', or 'CALM K=k' (runs saved before the field existed were K = 4)."""
    return 'baseline' if r['model'] == 'gpt' else f"CALM K={r.get('chunk_size', 4)}"


def table(runs: list[dict]) -> str:
    lines = ['| model | size (layers x d) | params | steps | tokens | training FLOPs | inference FLOPs/token '
             '| val BrierLM | Moby Dick BrierLM |', '|---|---|---|---|---|---|---|---|---|']
    for r in runs:
        lines.append(f"| {label(r)} | {r['n_layer']}x{r['n_embd']} | {r['params'] / 1e6:.2f}M | {r['steps']} "
                     f"| {r['tokens'] / 1e6:.1f}M | {r['train_flops']:.2e} | {r['inference_flops_per_token'] / 1e6:.2f}M "
                     f"| {r['val_brierlm']:.2f} ± {r['val_brierlm_se']:.2f} "
                     f"| {r['test_brierlm']:.2f} ± {r['test_brierlm_se']:.2f} |")
    ae = sorted({(label(r), r['ae_flops']) for r in runs if r['model'] == 'calm'})
    if ae:
        lines.append("\nCALM's training FLOPs include its autoencoder stage, shared by all sizes: "
                     + ', '.join(f"{k} {f:.2e}" for k, f in ae) + '.')
    return '\n'.join(lines)


def baseline_frontier(runs: list[dict]) -> list[tuple[float, float]]:
    """The baseline's frontier: (training FLOPs, the best val BrierLM of any baseline run with at most
    those FLOPs), one point per budget, by increasing FLOPs (a running maximum: a budget can always
    buy what a smaller one reached). Runs of one budget (other sizes; their FLOPs differ by the
    rounding of steps) make one point: their best score, at the largest of their FLOPs. Give it one
    seed's runs: over several seeds the best of each budget would flatter the baseline."""
    by_budget = {}
    for r in runs:
        if r['model'] == 'gpt':
            key = r.get('budget', r['train_flops'])
            f, b = by_budget.get(key, (0.0, float('-inf')))
            by_budget[key] = (max(f, r['train_flops']), max(b, r['val_brierlm']))
    frontier, best = [], float('-inf')
    for flops, score in sorted(by_budget.values()):
        best = max(best, score)
        frontier.append((flops, best))
    return frontier


def baseline_equivalent(frontier: list[tuple[float, float]], score: float) -> tuple[str, float | None]:
    """The training FLOPs at which the baseline's frontier first reaches `score`: ('=', F) interpolated
    linearly in log FLOPs between the two runs around it; ('<=', F) when the cheapest run already
    reaches it (the baseline needs at most F); ('>', None) when no run reaches it."""
    for i, (f1, b1) in enumerate(frontier):
        if b1 >= score:
            if i == 0:
                return '<=', f1
            f0, b0 = frontier[i - 1]
            t = (score - b0) / (b1 - b0)
            return '=', math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return '>', None


def equivalence(runs: list[dict]) -> str:
    """For each CALM run, the baseline's training FLOPs for the same val BrierLM (also at +- 1 standard
    error of CALM's score) and CALM's FLOPs as a multiple of them."""
    frontier = baseline_frontier(runs)
    calm = sorted((r for r in runs if r['model'] == 'calm'), key=lambda r: (label(r), r['train_flops']))
    if not frontier or not calm:
        return ''

    def show(rel, f):
        return 'none of the baseline runs' if f is None else f"{'<= ' if rel == '<=' else ''}{f:.2g}"
    lines = ['| CALM run | val BrierLM | its training FLOPs | the baseline\'s FLOPs for that score '
             '(at -1 / +1 SE) | CALM / baseline |', '|---|---|---|---|---|']
    for r in calm:
        score, se = r['val_brierlm'], r['val_brierlm_se']
        rel, f = baseline_equivalent(frontier, score)
        lo, hi = baseline_equivalent(frontier, score - se), baseline_equivalent(frontier, score + se)
        ratio = '-' if f is None else f"{'>= ' if rel == '<=' else ''}{r['train_flops'] / f:.0f}x"
        lines.append(f"| {label(r)} {r['n_layer']}x{r['n_embd']} | {score:.2f} ± {se:.2f} | {r['train_flops']:.2e} "
                     f"| {show(rel, f)} ({show(*lo)} / {show(*hi)}) | {ratio} |")
    return '\n'.join(lines)


def plot(runs: list[dict], path: Path):
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    calm_styles = iter(['o-', '^-.', 'v:', 'D-'] * 4)

    def key(r):
        return r['n_layer'], r['n_embd'], r.get('budget')
    paired = {key(r) for r in runs if len({label(o) for o in runs if key(o) == key(r)}) > 1}
    for name in sorted({label(r) for r in runs}, key=lambda n: (n != 'baseline', n)):
        rs = sorted((r for r in runs if label(r) == name), key=lambda r: r['train_flops'])
        style, text = (('s--', 'baseline (next token)') if name == 'baseline'
                       else (next(calm_styles), f'{name} (next vector of K tokens)'))
        # left: the line joins the frontier (runs that no run of at most 1% more FLOPs beats), the rest
        # are bare markers; right: the compute-matched pairs only (a size and budget that another model shares)
        frontier = [r for r in rs if not any(o['train_flops'] <= 1.01 * r['train_flops']
                                             and o['val_brierlm'] > r['val_brierlm'] for o in rs)]
        others = [r for r in rs if r not in frontier]
        by_cost = sorted((r for r in rs if key(r) in paired), key=lambda r: r['inference_flops_per_token'])
        for ax, x, pts, rest in zip(axes, ('train_flops', 'inference_flops_per_token'), (frontier, by_cost),
                                    (others, [])):
            line = ax.errorbar([r[x] for r in pts], [r['val_brierlm'] for r in pts],
                               yerr=[r['val_brierlm_se'] for r in pts], fmt=style, capsize=3, label=text)
            if rest:
                ax.errorbar([r[x] for r in rest], [r['val_brierlm'] for r in rest],
                            yerr=[r['val_brierlm_se'] for r in rest], fmt=style[0], capsize=3,
                            color=line[0].get_color(), alpha=0.5)
            for r in pts + rest:
                ax.annotate(f"{r['n_layer']}x{r['n_embd']}", (r[x], r['val_brierlm']), fontsize=7,
                            textcoords='offset points', xytext=(4, -10))
    axes[0].set_xlabel('training FLOPs (CALM: + its autoencoder stage)')
    axes[1].set_xlabel('inference FLOPs per generated token')
    for ax in axes:
        ax.set_xscale('log')
        ax.set_ylabel('validation BrierLM')
        ax.legend(fontsize=8)
    fig.suptitle('compute-matched: the models of each size share one training-FLOP budget (left, faded: runs '
                 'off their model\'s frontier; right: the matched pairs)', fontsize=9)
    save(fig, path)


def cli(argv: list[str]) -> int:
    return run_cli(main, Config, argv, (ConfigError, CheckpointError, DataError, OSError))


if __name__ == '__main__':
    sys.exit(cli(sys.argv[1:]))
