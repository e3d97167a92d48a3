"""Charts saved as PNG files with matplotlib's Agg backend (no window is ever opened)."""
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only when a chart is drawn (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(train: list, valid: list, path: Path) -> Path:
    """Train loss per iteration and valid loss per epoch, against the iteration, into a PNG.

    train, valid: [(iteration, loss)]. Returns path.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train (per iteration)", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid (per epoch)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
