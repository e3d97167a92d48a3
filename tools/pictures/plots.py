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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", "-.", ":")


def plot_grad_flow(flows: list, path: Path, x_label: str = "samples") -> Path:
    """The gradient-flow chart: mean and max |grad| per layer (forward order), one line per logged step.

    flows: [(when, {layer: (mean |grad|, max |grad|)})], `when` counted in `x_label` units ('samples'
    seen, or 'epoch'). Log scale, so vanishing gradients show as a slope down towards the first layers.
    Each step has its own colour, marker and dash, and sits a little to the side of the others, so that a
    line on top of another stays visible; both panels carry the legend. Returns path.
    """
    plt = pyplot()
    fig, (ax_mean, ax_max) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=90, sharex=True)
    colors = plt.cm.viridis([i / max(len(flows) - 1, 1) for i in range(len(flows))])
    def shown(v: float) -> float:  # a log axis shows positive finite values; NaN/Inf and zeros are gaps
        return v if math.isfinite(v) and v > 0 else math.nan

    drawn = False
    spread = 0.25 / max(len(flows), 1)  # each step's points shifted sideways by a little: none hides another
    for k, (color, (step, flow)) in enumerate(zip(colors, flows)):
        layers = list(flow)
        label = f"after {step} samples" if x_label == "samples" else f"after {x_label} {step}"
        means, maxes = [shown(flow[n][0]) for n in layers], [shown(flow[n][1]) for n in layers]
        drawn = drawn or any(math.isfinite(v) for v in means + maxes)
        x = [i + (k - (len(flows) - 1) / 2) * spread for i in range(len(layers))]
        style = {"color": color, "label": label, "marker": MARKERS[k % len(MARKERS)],
                 "linestyle": LINE_STYLES[k % len(LINE_STYLES)], "markersize": 5, "alpha": 0.9}
        ax_mean.plot(x, means, **style)
        ax_max.plot(x, maxes, **style)
    for ax, what in ((ax_mean, "mean |grad|"), (ax_max, "max |grad|")):
        if drawn:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no finite, non-zero gradient", transform=ax.transAxes, ha="center")
        ax.set_ylabel(what)
        ax.set_title(what + " per layer", fontsize=11)
        ax.set_xlabel("layer (input -> output)")
        ax.grid(alpha=0.3, which="both")
        if flows:
            names = list(flows[0][1])
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels([n.removesuffix(".weight") for n in names], rotation=60, ha="right", fontsize=8)
            ax.legend(fontsize=7)
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


ACTIVATION_PANELS = {"no activation": ("normal", "normal-scaled"),
                     "tanh": ("tanh", "tanh-xavier", "tanh-xavier-torch"),
                     "ReLU": ("relu-normal-scaled", "relu-kaiming", "relu-kaiming-torch")}


def plot_activation_std(stds: dict, path: Path) -> Path:
    """Activation std against layer for several init modes, a panel per activation (none, tanh, ReLU), each
    on its own log scale: tanh's slow fall is not flattened by the std-1 init's climb to 1e37.

    stds: mode -> [std after layer 1, ...], None after a blow-up (that line ends with an x). PyTorch's own
    init (-torch) is drawn dashed with hollow markers on top of the manual one it equals. Returns path.
    """
    plt = pyplot()
    panels = {title: [m for m in modes if m in stds] for title, modes in ACTIVATION_PANELS.items()}
    panels = {t: m for t, m in panels.items() if m} or {"": list(stds)}
    leftover = [m for m in stds if not any(m in modes for modes in panels.values())]
    if leftover:
        panels["other"] = leftover
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), dpi=100, squeeze=False)
    for ax, (title, modes) in zip(axes[0], panels.items()):
        for k, mode in enumerate(modes):
            values = stds[mode]
            finite = [(i, v) for i, v in enumerate(values, start=1) if v is not None and v > 0]
            if not finite:
                continue
            torch_init = mode.endswith("-torch")
            line, = ax.plot(*zip(*finite), "--" if torch_init else "-", label=mode, linewidth=1.5,
                            marker="o" if torch_init else None, markevery=10, markerfacecolor="none")
            if len(finite) < len(values):
                ax.plot(*finite[-1], "x", color=line.get_color(), markersize=9)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("std of the activations")
    fig.suptitle("activations through the layers (x: the next layer overflows)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
