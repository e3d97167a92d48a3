"""The loss lab: each of the course's loss functions on the course's small fixed tensors, every reduction,
and a check by hand beside PyTorch's value.

    python -m tools.loss_lab                 # the table, smooth_l1.png, and the same in TensorBoard
    tensorboard --logdir runs                # Text tab: the table; Scalars: SmoothL1 and L1 against x

The inputs are the course's. Where the course draws them at random (PoissonNLL), they are the course's
draws: after torch.manual_seed(--seed), 1 as in the course, its script has drawn 8 numbers for earlier
sections, so this lab draws those 8 first. Two of the course's examples are not how the losses are meant
to be used, and the lab prints the right use beside each: NLLLoss on raw scores (it expects
log-probabilities), and PoissonNLLLoss on negative targets (counts are never negative).
"""
import math
import warnings

import torch
from torch import nn
from torch.nn import functional as F

REDUCTIONS = ("none", "sum", "mean")


def reductions(loss_class, *inputs, **options) -> dict:
    """The loss under every reduction: {'none': list, 'sum': float, 'mean': float}."""
    return {r: (loss_class(reduction=r, **options)(*inputs)).tolist() for r in REDUCTIONS}


def cross_entropy() -> list[dict]:
    """CrossEntropyLoss on the course's 3 samples of 2 classes, plain and with class weights [1, 2]."""
    inputs = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 3.0]])
    target = torch.tensor([0, 1, 1])
    x = inputs[0].tolist()  # by hand, sample 0: -x[class] + log(sum(exp(x)))
    by_hand = -x[0] + math.log(sum(math.exp(v) for v in x))
    weights = torch.tensor([1.0, 2.0])
    # weighted mean: the sum of weighted losses over the sum of the samples' weights (1 + 2 + 2)
    weighted = [by_hand * 1, *[(-3 + math.log(math.exp(1) + math.exp(3))) * 2] * 2]
    return [
        {"loss": "CrossEntropyLoss", "values": reductions(nn.CrossEntropyLoss, inputs, target),
         "by_hand": {"none[0]": by_hand}},
        {"loss": "CrossEntropyLoss(weight=[1, 2])", "values": reductions(nn.CrossEntropyLoss, inputs, target, weight=weights),
         "by_hand": {"sum": sum(weighted), "mean": sum(weighted) / 5}},
    ]


def nll() -> list[dict]:
    """NLLLoss takes -x[class]. The course's example gives it the raw scores (weights [1, 1]), so its losses
    are negative; meant for log-probabilities, NLLLoss(log_softmax(x)) is CrossEntropyLoss(x)."""
    inputs = torch.tensor([[1.0, 2.0], [1.0, 3.0], [1.0, 3.0]])
    target = torch.tensor([0, 1, 1])
    cross_entropy_mean = nn.CrossEntropyLoss()(inputs, target).item()
    return [{"loss": "NLLLoss(weight=[1, 1]), the course's: on raw scores",
             "values": reductions(nn.NLLLoss, inputs, target, weight=torch.ones(2)),
             "by_hand": {"none": [-1.0, -3.0, -3.0], "mean": -7 / 3}},
            {"loss": "NLLLoss on log_softmax(scores), as meant: CrossEntropyLoss",
             "values": reductions(nn.NLLLoss, F.log_softmax(inputs, dim=1), target),
             "by_hand": {"mean": cross_entropy_mean}}]


def binary() -> list[dict]:
    """BCELoss on sigmoid outputs, and BCEWithLogitsLoss on the logits themselves, with pos_weight 3."""
    logits = torch.tensor([[1.0, 2.0], [2.0, 2.0], [3.0, 4.0], [4.0, 5.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    p = torch.sigmoid(logits)
    p00, p01 = p[0, 0].item(), p[0, 1].item()
    return [
        {"loss": "BCELoss", "values": reductions(nn.BCELoss, p, target),
         "by_hand": {"none[0][0]": -math.log(p00), "none[0][1]": -math.log(1 - p01)}},
        {"loss": "BCEWithLogitsLoss: sigmoid and BCELoss in one", "values": reductions(nn.BCEWithLogitsLoss, logits, target),
         "by_hand": {"mean": nn.BCELoss()(p, target).item()}},
        {"loss": "BCEWithLogitsLoss(pos_weight=3)",
         "values": reductions(nn.BCEWithLogitsLoss, logits, target, pos_weight=torch.tensor([3.0])),
         "by_hand": {"none[0][0]": -3 * math.log(p00), "none[0][1]": -math.log(1 - p01)}},
    ]


def regression() -> list[dict]:
    """L1 and MSE on ones against threes; SmoothL1 at one point of each piece (beta 1)."""
    inputs, target = torch.ones(2, 2), torch.full((2, 2), 3.0)
    x = torch.tensor([0.5, 2.0])
    return [
        {"loss": "L1Loss", "values": reductions(nn.L1Loss, inputs, target), "by_hand": {"mean": abs(1 - 3)}},
        {"loss": "MSELoss", "values": reductions(nn.MSELoss, inputs, target), "by_hand": {"mean": (1 - 3) ** 2}},
        {"loss": "SmoothL1Loss", "values": reductions(nn.SmoothL1Loss, x, torch.zeros(2)),
         "by_hand": {"none": [0.5 * 0.5 ** 2, 2.0 - 0.5]}},  # 0.5 x^2 below 1, |x| - 0.5 above
    ]


COURSE_EARLIER_DRAWS = 8  # numbers the course's script draws after manual_seed before its PoissonNLL section


def poisson_and_kl(seed: int) -> list[dict]:
    """PoissonNLLLoss (log input: exp(x) - y x) on the course's random tensors, and on counts (what it is
    meant for: a target that is never negative); KLDivLoss of log-probability inputs."""
    torch.manual_seed(seed)
    torch.randn(COURSE_EARLIER_DRAWS)  # the course's earlier sections' draws, so that these tensors are its own
    inputs, target = torch.randn(2, 2), torch.randn(2, 2)
    counts = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    x, y = inputs[0, 0].item(), target[0, 0].item()
    kl_inputs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    kl_target = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.7, 0.2]])
    kl_none = nn.KLDivLoss(reduction="none")(kl_inputs, kl_target)
    with warnings.catch_warnings():  # 'mean' divides by every element, not by the batch: PyTorch warns, as it should
        warnings.simplefilter("ignore", UserWarning)
        kl = {r: nn.KLDivLoss(reduction=r)(kl_inputs, kl_target).tolist() for r in ("none", "sum", "mean", "batchmean")}
    t, i = kl_target[0, 0].item(), kl_inputs[0, 0].item()
    return [
        {"loss": "PoissonNLLLoss, the course's: negative targets", "values": reductions(nn.PoissonNLLLoss, inputs, target),
         "by_hand": {"none[0][0]": math.exp(x) - y * x}},
        {"loss": "PoissonNLLLoss on counts", "values": reductions(nn.PoissonNLLLoss, inputs, counts),
         "by_hand": {"none[1][1]": math.exp(inputs[1, 1].item()) - 3.0 * inputs[1, 1].item()}},
        {"loss": "KLDivLoss", "values": kl,
         "by_hand": {"none[0][0]": t * (math.log(t) - i), "batchmean": kl_none.sum().item() / 2}},
    ]


def margins() -> list[dict]:
    """The margin losses on the course's tensors."""
    cos = F.cosine_similarity(torch.tensor([[0.3, 0.5, 0.7]]), torch.tensor([[0.1, 0.3, 0.5]])).item()
    return [
        {"loss": "MarginRankingLoss", "values": reductions(nn.MarginRankingLoss, torch.tensor([1.0, 2.0, 3.0]),
                                                         torch.tensor([2.0, 2.0, 2.0]), torch.tensor([1.0, 1.0, -1.0])),
         "by_hand": {"none": [max(0, -y * (a - b)) for a, b, y in ((1, 2, 1), (2, 2, 1), (3, 2, -1))]}},
        {"loss": "MultiLabelMarginLoss", "values": reductions(nn.MultiLabelMarginLoss, torch.tensor([[0.1, 0.2, 0.4, 0.8]]),
                                                            torch.tensor([[0, 3, -1, 1]])),
         # targets 0 and 3 against the others (1, 2), over the 4 classes
         "by_hand": {"none": [((1 - (0.1 - 0.2)) + (1 - (0.1 - 0.4)) + (1 - (0.8 - 0.2)) + (1 - (0.8 - 0.4))) / 4]}},
        {"loss": "SoftMarginLoss", "values": reductions(nn.SoftMarginLoss, torch.tensor([[0.3, 0.7], [0.5, 0.5]]),
                                                      torch.tensor([[-1.0, 1.0], [1.0, -1.0]])),
         "by_hand": {"none[0][0]": math.log(1 + math.exp(0.3))}},
        {"loss": "MultiLabelSoftMarginLoss",
         "values": reductions(nn.MultiLabelSoftMarginLoss, torch.tensor([[0.3, 0.7, 0.8]]), torch.tensor([[0.0, 1.0, 1.0]])),
         "by_hand": {"none": [(math.log(1 - sigmoid(0.3)) + math.log(sigmoid(0.7)) + math.log(sigmoid(0.8))) / -3]}},
        {"loss": "MultiMarginLoss", "values": reductions(nn.MultiMarginLoss, torch.tensor([[0.1, 0.2, 0.7], [0.2, 0.5, 0.3]]),
                                                       torch.tensor([1, 2])),
         "by_hand": {"none": [(max(0, 1 - 0.2 + 0.1) + max(0, 1 - 0.2 + 0.7)) / 3,
                              (max(0, 1 - 0.3 + 0.2) + max(0, 1 - 0.3 + 0.5)) / 3]}},
        {"loss": "TripletMarginLoss(p=1)", "values": reductions(nn.TripletMarginLoss, torch.tensor([[1.0]]),
                                                              torch.tensor([[2.0]]), torch.tensor([[0.5]]), p=1),
         "by_hand": {"none": [max(0, abs(1 - 2) - abs(1 - 0.5) + 1)]}},
        {"loss": "HingeEmbeddingLoss", "values": reductions(nn.HingeEmbeddingLoss, torch.tensor([[1.0, 0.8, 0.5]]),
                                                          torch.tensor([[1.0, 1.0, -1.0]])),
         "by_hand": {"none[0]": [1.0, 0.8, max(0, 1 - 0.5)]}},  # x where y = 1, max(0, margin - x) where y = -1
        {"loss": "CosineEmbeddingLoss",
         "values": reductions(nn.CosineEmbeddingLoss, torch.tensor([[0.3, 0.5, 0.7], [0.3, 0.5, 0.7]]),
                              torch.tensor([[0.1, 0.3, 0.5], [0.1, 0.3, 0.5]]), torch.tensor([1.0, -1.0])),
         "by_hand": {"none": [1 - cos, max(0, cos)]}},
    ]


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), in plain Python, for the checks by hand."""
    return 1 / (1 + math.exp(-x))


def lab(seed: int = 1) -> list[dict]:
    """Every loss of the course: [{'loss', 'values': {reduction: value(s)}, 'by_hand': {what: value}}]."""
    return [*cross_entropy(), *nll(), *binary(), *regression(), *poisson_and_kl(seed), *margins()]


def picked(values: dict, key: str):
    """The value a by-hand key names: 'mean', 'none', or an element such as 'none[0][1]'."""
    name, *index = key.replace("]", "").split("[")
    value = values[name]
    for i in index:
        value = value[int(i)]
    return value


def rounded(value, digits: int = 4):
    return [rounded(v, digits) for v in value] if isinstance(value, list) else round(value, digits)


def format_table(results: list[dict]) -> str:
    """One block per loss: each reduction, then each by-hand value beside PyTorch's."""
    lines = []
    for result in results:
        lines.append(result["loss"])
        lines += [f"  {r:<10} {rounded(v)}" for r, v in result["values"].items()]
        lines += [f"  by hand    {key}: {rounded(value)}   PyTorch: {rounded(picked(result['values'], key))}"
                  for key, value in result["by_hand"].items()]
    return "\n".join(lines)


def smooth_l1_curves(points: int = 500) -> tuple[list[float], list[float], list[float]]:
    """x in [-3, 3] and, against a target of 0, SmoothL1 (beta 1) and L1: the course's picture."""
    x = torch.linspace(-3, 3, points)
    zeros = torch.zeros_like(x)
    return (x.tolist(), F.smooth_l1_loss(x, zeros, reduction="none").tolist(),
            F.l1_loss(x, zeros, reduction="none").tolist())


def plot_smooth_l1(path) -> None:
    from tools.pictures.plots import pyplot

    plt = pyplot()
    x, smooth, l1 = smooth_l1_curves()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(x, smooth, label="SmoothL1Loss (beta 1): 0.5 x^2 for |x| < 1, |x| - 0.5 beyond")
    ax.plot(x, l1, "--", label="L1Loss: |x|")
    ax.set_xlabel("x - target")
    ax.set_ylabel("loss")
    ax.set_title("SmoothL1 against L1: quadratic near 0, so its gradient shrinks to 0 there")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def get_args_parser():
    from tools.cli.arguments import ArgumentParser, add_common_args

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.loss_lab")
    return add_common_args(parser, name="loss_lab", device=False)


def main(args) -> dict:
    from tools.pictures.plots import png_to_array
    from tools.tb.writer import open_writer
    from tools.training.run_dirs import new_run_dir

    run_dir = new_run_dir(args.logdir, args.run_name)
    results = lab(args.seed)
    table = format_table(results)
    print(table)
    plot_smooth_l1(run_dir / "smooth_l1.png")
    with open_writer(run_dir) as writer:
        writer.add_text("losses", "```\n" + table + "\n```")
        x, smooth, l1 = smooth_l1_curves(61)  # x = -3.0, -2.9, ..., 3.0 as steps 0..60
        for step, (s, a) in enumerate(zip(smooth, l1)):
            writer.add_scalars("smooth_l1_vs_l1", {"SmoothL1": s, "L1": a}, step)
        writer.add_image("smooth_l1_vs_l1", png_to_array(run_dir / "smooth_l1.png"), 0, dataformats="HWC")
    from tools.cli.arguments import tensorboard_command

    print(f"wrote {run_dir / 'smooth_l1.png'}\nsee them with: {tensorboard_command(args.logdir, run_dir)}")
    return {"run_dir": str(run_dir), "results": results}


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
