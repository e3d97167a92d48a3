"""Charts saved as PNG files with matplotlib's Agg backend (no window is ever opened)."""
import math
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only when a chart is drawn (it costs ~0.5 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(history: dict, path: Path) -> Path:
    """The run's two curves side by side, into a PNG: loss (train per iteration, valid per epoch) and
    accuracy (train: the epoch's running accuracy, and valid, per epoch), against the iteration.

    history: TrainState.history ({'train', 'valid', 'train_acc', 'valid_acc': [(iteration, value)]}).
    Returns path."""
    plt = pyplot()
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, curves, what in ((loss, (("train", "train (per iteration)", "-"), ("valid", "valid (per epoch)", "o-")),
                              "loss"),
                             (acc, (("train_acc", "train (per epoch)", "o-"), ("valid_acc", "valid (per epoch)", "o-")),
                              "accuracy")):
        for key, label, style in curves:
            if history.get(key):
                ax.plot(*zip(*history[key]), style, label=label, linewidth=1 if style == "-" else 1.5, markersize=4)
        ax.set_xlabel("iteration")
        ax.set_ylabel(what)
        ax.set_title(what)
        ax.legend()
        ax.grid(alpha=0.3)
    acc.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_histograms(hists: dict, path: Path, title: str = "gradient histograms") -> Path:
    """One bar chart per tensor: hists is name -> tools.monitor.Histogram. Returns path."""
    plt = pyplot()
    cols = min(len(hists), 3) or 1
    rows = (len(hists) + cols - 1) // cols or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), dpi=90, squeeze=False)
    for ax, (name, hist) in zip(axes.flat, hists.items()):
        edges = hist.edges
        ax.bar(edges[:-1], hist.bucket_counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])],
               align="edge", color="tab:blue", edgecolor="white", linewidth=0.3)
        extra = f", {hist.nan} NaN, {hist.inf} Inf" if hist.nan or hist.inf else ""
        ax.set_title(f"{name} ({hist.num} values{extra})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
    for ax in list(axes.flat)[len(hists):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_grad_flow(flows: list, path: Path, x_label: str = "samples") -> Path:
    """The gradient-flow chart: mean and max |grad| per layer (forward order), one line per logged step.

    flows: [(when, {layer: (mean |grad|, max |grad|)})], `when` counted in `x_label` units ('samples'
    seen, or 'epoch'). Log scale, so vanishing gradients show as a slope down towards the first layers.
    Returns path.
    """
    plt = pyplot()
    fig, (ax_mean, ax_max) = plt.subplots(1, 2, figsize=(11, 4), dpi=90, sharex=True)
    colors = plt.cm.viridis([i / max(len(flows) - 1, 1) for i in range(len(flows))])
    def shown(v: float) -> float:  # a log axis shows positive finite values; NaN/Inf and zeros are gaps
        return v if math.isfinite(v) and v > 0 else math.nan

    drawn = False
    for color, (step, flow) in zip(colors, flows):
        layers = list(flow)
        label = f"after {step} samples" if x_label == "samples" else f"after {x_label} {step}"
        means, maxes = [shown(flow[n][0]) for n in layers], [shown(flow[n][1]) for n in layers]
        drawn = drawn or any(math.isfinite(v) for v in means + maxes)
        ax_mean.plot(range(len(layers)), means, "o-", color=color, label=label)
        ax_max.plot(range(len(layers)), maxes, "o-", color=color, label=label)
    for ax, what in ((ax_mean, "mean |grad|"), (ax_max, "max |grad|")):
        if drawn:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no finite, non-zero gradient", transform=ax.transAxes, ha="center")
        ax.set_ylabel(what)
        ax.set_xlabel("layer (input -> output)")
        ax.grid(alpha=0.3, which="both")
        if flows:
            names = list(flows[0][1])
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=60, ha="right", fontsize=7)
    ax_max.legend(fontsize=7)
    fig.suptitle("gradient flow")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def png_to_array(path: Path):
    """A PNG file as an (H, W, 3) uint8 numpy array, e.g. for SummaryWriter.add_image(dataformats='HWC')."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def plot_activation_std(stds: dict, path: Path) -> Path:
    """Activation std against layer for several init modes on one log-scale chart.

    stds: mode -> [std after layer 1, ...], None after a blow-up (that line ends with an x). Returns path.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for mode, values in stds.items():
        finite = [(i, v) for i, v in enumerate(values, start=1) if v is not None and v > 0]
        if not finite:
            continue
        style = "--" if mode.endswith("-torch") else "-"  # PyTorch's own init lies on top of the manual one
        line, = ax.plot(*zip(*finite), style, label=mode, linewidth=1.5)
        if len(finite) < len(values):
            ax.plot(*finite[-1], "x", color=line.get_color(), markersize=9)
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("std of the activations")
    ax.set_title("activations through the layers (x: NaN/Inf next)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
