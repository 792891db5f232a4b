"""matplotlib for the experiment scripts, if installed (pip install -e '.[plot]')."""
from pathlib import Path

from calm_min.config import ConfigError

FORMATS = {'.png': (b'\x89PNG',), '.pdf': (b'%PDF',), '.svg': (b'<?xml', b'<svg')}   # suffix: how such a file starts


def check_plot_path(path: str, flag: str):
    """Before any work: a plot can be written at `path` (a suffix matplotlib writes), replacing at most
    an earlier plot of its format, never a checkpoint or any other file."""
    from train import check_output_file
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS and not Path(path).is_dir():
        raise ConfigError(f"--{flag}={path}: the plot's file name must end in {', '.join(FORMATS)}")
    check_output_file(path, flag, f'a {suffix} image', FORMATS.get(suffix, ()), 'plot.png')


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
