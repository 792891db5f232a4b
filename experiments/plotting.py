"""matplotlib for the experiment scripts, if installed (pip install -e '.[plot]')."""
from pathlib import Path

from calm_min.config import ConfigError

FORMATS = {'.png': (b'\x89PNG',), '.pdf': (b'%PDF',), '.svg': (b'<?xml', b'<svg')}   # suffix: how such a file starts


def check_plot_path(path: str, flag: str):
    """Before any work: a plot can be written at `path`, replacing at most an earlier plot of its
    format, never a checkpoint or any other file (a ConfigError naming --flag otherwise)."""
    from train import check_writable
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--{flag}={path} is a folder: give a file name, e.g. --{flag}={p / 'plot.png'}")
    if p.suffix.lower() not in FORMATS:
        raise ConfigError(f"--{flag}={path}: the plot's file name must end in {', '.join(FORMATS)}")
    check_writable(p.resolve().parent, flag)
    if p.is_file() and p.stat().st_size:
        with open(p, 'rb') as f:
            if not f.read(8).startswith(FORMATS[p.suffix.lower()]):
                raise ConfigError(f"--{flag}={path} exists and is not a {p.suffix} image: it would be "
                                  f"overwritten; choose another file")


def pyplot():
    """The pyplot module on the file-only Agg backend, or None (with a note) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[plot]'): no plot")
        return None
    return plt


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")
