"""matplotlib for the experiment scripts, if installed (pip install -e '.[plot]')."""


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
