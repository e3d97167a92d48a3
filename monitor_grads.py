"""Watch gradients layer by layer: norms, histograms, gradient flow, and a verdict on training health.

    python monitor_grads.py                         # the course's toy net on 40 random 224x224 images
    python monitor_grads.py --model lenet           # LeNet on the RMB photos (or the generated set)
    python monitor_grads.py --scenario lr-too-low   # a broken run from the labelled suite, judged every epoch
    python monitor_grads.py --scenario list         # the suite: every problem the verdict names, healthy runs

One forward and backward per sample; gradients add up and, every --accumulate samples, are printed (per-parameter
L2 norms in forward order, histograms as counts and bin edges) before optimizer.step() and zero_grad().
Writes grad_histograms.png, gradient_flow.png and TensorBoard events into runs/<time>_<run-name>/.
A --scenario trains for a few epochs as tools/suites/scenarios.py says (on the RMB data) and prints the verdict's
findings every epoch; its TensorBoard events go to the run folder too.
"""
import json
import sys

import torch
from torch import nn

from model import LeNet, ToyModel
from tools.cli.arguments import (
    REPO_ROOT,
    ArgumentParser,
    add_common_args,
    add_data_args,
    int_between,
    positive_float,
    positive_int,
    run_script,
    seed_everything,
    select_device,
    tensorboard_command,
)
from tools.monitor import TrainingMonitor
from tools.monitor.activations import activation_stats
from tools.monitor.tensor_stats import grad_flow, grad_norms, histograms
from tools.suites.scenarios import BY_NAME, SCENARIOS, run_scenario
from tools.training.run_dirs import new_run_dir

MAX_SAMPLES = 1000    # the toy's inputs are 3x224x224: 1000 of them take 600 MB


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("toy", "lenet"), default="toy",
                        help="toy: the course's ToyModel on random images; lenet: LeNet on RMB data")
    parser.add_argument("--scenario", choices=("none", "list", *BY_NAME), default="none", metavar="NAME",
                        help="a run from the labelled suite of broken and healthy runs (list: show them)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="--scenario: epochs (default: its own)")
    parser.add_argument("--samples", type=int_between(1, MAX_SAMPLES), default=40,
                        help="samples in all, one forward and backward each")
    parser.add_argument("--accumulate", type=positive_int, default=10,
                        help="samples whose gradients add up before each print and optimizer step")
    parser.add_argument("--lr", type=positive_float, default=1e-3,
                        help="SGD learning rate")
    parser.add_argument("--bins", type=int_between(1, 1000), default=10, help="bins of the printed histograms")
    return add_common_args(add_data_args(parser), name="grads", seed=0)


def build_experiment(args, device: torch.device):
    """(model, inputs, labels, classes) for the chosen model; inputs (samples, ...)."""
    n = args.samples
    if args.model == "toy":  # the course's experiment: torch.manual_seed(0), random images and labels
        model = ToyModel(in_channels=3, out_channels=64, classes=2)
        inputs, labels = torch.randn(n, 3, 224, 224), torch.randint(0, 2, (n,))
        return model.to(device), inputs, labels, ["0", "1"]
    from tools.data.image_folder import default_data_dir, load_splits

    data_dir = args.data_dir or default_data_dir(REPO_ROOT / "data")[0]
    train = load_splits(data_dir, args.norm, args.cache_dir or None, args.strict)["train"]
    order = torch.randperm(len(train))[:n]
    inputs = torch.stack([train[i][0] for i in order.tolist()])
    labels = torch.tensor([train.targets[i] for i in order.tolist()])
    return LeNet(len(train.classes)).initialize_weights().to(device), inputs, labels, train.classes


def format_report(samples: int, total: int, loss: float, norms: dict, hists: dict) -> str:
    """The terminal block for one print: norms as an ordered table, histograms as counts and edges."""
    width = max(len(n) for n in norms)
    lines = [f"samples {samples}/{total}  mean loss {loss:.4f}", "  gradient L2 norms (forward order):"]
    lines += [f"    {name:<{width}}  {value:.4e}" for name, value in norms.items()]
    lines.append(f"  gradient histograms ({len(next(iter(hists.values())).bucket_counts)} bins):")
    for name, hist in hists.items():
        counts = " ".join(f"{int(c)}" for c in hist.bucket_counts)
        edges = " ".join(f"{e:.3g}" for e in hist.edges)
        extra = f"  NaN {hist.nan} Inf {hist.inf}" if hist.nan or hist.inf else ""
        lines.append(f"    {name:<{width}}  counts [{counts}]  edges [{edges}]{extra}")
    return "\n".join(lines)


def main(args) -> dict:
    if args.scenario != "none":
        return scenario(args)
    device = select_device(args.device)
    run_dir = new_run_dir(args.logdir, args.run_name)
    seed_everything(args.seed)
    model, inputs, labels, classes = build_experiment(args, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    from tools.pictures.plots import plot_grad_flow, plot_histograms, png_to_array
    from tools.tb.writer import LOSS, PICTURES, RunWriter, log_args

    writer = RunWriter(run_dir)
    log_args(writer, vars(args) | {"device": device})
    # Each group of --accumulate samples is one optimizer step, and one print. One unit everywhere, in
    # the terminal, TensorBoard's x axis and the charts: the samples seen.
    monitor = TrainingMonitor(model, writer, log_interval=1, classes=len(classes))
    monitor.set_forward_order(inputs[:1].to(device))
    flows, reports, verdicts = [], [], []
    try:
        for start in range(0, args.samples, args.accumulate):
            group = range(start, min(start + args.accumulate, args.samples))
            seen = group[-1] + 1  # samples seen: the x axis
            losses = []
            with activation_stats(model) as acts:  # dead units: never active over the whole group
                for i in group:
                    loss = criterion(model(inputs[i:i + 1].to(device)), labels[i:i + 1].to(device))
                    loss.backward()  # as in the course: the group's gradients add up, sample by sample
                    losses.append(loss.detach())
            mean_loss = torch.stack(losses).mean()
            monitor.after_backward(seen, mean_loss)
            norms = grad_norms(model)
            norms = {name: norms[name] for name in monitor.order if name in norms}
            params = dict(model.named_parameters())
            hists = dict(zip(norms, histograms([params[n].grad for n in norms], args.bins)))
            flows.append((seen, grad_flow(model)))
            verdict = monitor.end_epoch(seen, mean_loss.item(), acts.result(), label=f"samples {seen}")
            verdicts.append(verdict)
            reports.append({"samples": seen, "loss": mean_loss.item(), "norms": norms} | verdict.as_dict())
            print(format_report(seen, args.samples, mean_loss.item(), norms, hists) + f"\n  verdict: {verdict.status}\n"
                  + "".join(f"    {line}\n" for line in verdict.lines()))
            if monitor.nonfinite:
                print(f"stopped: {monitor.nonfinite[1]}", file=sys.stderr)
                break
            optimizer.step()
            monitor.after_step(seen, {LOSS: {"train": mean_loss.item()}})
            optimizer.zero_grad()
        samples = reports[-1]["samples"]
        plot_histograms(hists, run_dir / "grad_histograms.png", f"gradient histograms after {samples} samples")
        plot_grad_flow(flows, run_dir / "gradient_flow.png")
        writer.add_image(f"{PICTURES}/gradient_flow", png_to_array(run_dir / "gradient_flow.png"), seen,
                         dataformats="HWC")
    finally:
        writer.close()
    (run_dir / "grad_report.json").write_text(json.dumps(reports, indent=2) + "\n")
    print(f"final verdict: {verdicts[-1].status}")
    print(f"charts in {run_dir} (grad_histograms.png, gradient_flow.png)\n"
          f"see them with: {tensorboard_command(args.logdir, run_dir)}")
    return {"run_dir": str(run_dir), "reports": reports, "verdict": verdicts[-1].status}


def scenario(args) -> dict:
    """--scenario NAME: train as the suite says and print the verdict's findings every epoch (list: the suite)."""
    if args.scenario == "list":
        for s in SCENARIOS:
            print(f"{s.name:<20} expected {s.expected:<22} {s.story}")
        return {"scenarios": [s.name for s in SCENARIOS]}
    from tools.data.image_folder import default_data_dir, load_splits
    from tools.tb.writer import RunWriter

    chosen, device = BY_NAME[args.scenario], select_device(args.device)
    data = load_splits(args.data_dir or default_data_dir(REPO_ROOT / "data")[0], args.norm, args.cache_dir or None,
                       args.strict)
    run_dir = new_run_dir(args.logdir, f"{args.run_name}_{chosen.name}")
    print(f"scenario {chosen.name}: {chosen.story}; the verdict should name {chosen.expected} first")
    flows = []  # the gradient flow after each epoch's training
    with RunWriter(run_dir) as writer:
        result = run_scenario(chosen, data, device, args.epochs, writer, say=print,
                              after_training=lambda epoch, model: flows.append((epoch, grad_flow(model))))
        from tools.pictures.plots import plot_grad_flow

        plot_grad_flow(flows, run_dir / "gradient_flow.png", x_label="epoch")
    verdicts = result["verdicts"]
    print(f"final verdict: {verdicts[-1].status}; " + (f"{chosen.expected} named first from epoch {result['detected']}"
                                                        if result["detected"] else f"{chosen.expected} not named first")
          + f"\ngradient flow in {run_dir / 'gradient_flow.png'}; see the run with: {tensorboard_command(args.logdir, run_dir)}")
    return {"run_dir": str(run_dir), "verdict": verdicts[-1].status, "detected": result["detected"],
            "verdicts": [v.as_dict() for v in verdicts]}


if __name__ == "__main__":
    run_script(main, get_args_parser())
