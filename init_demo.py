"""The weight-initialisation lab: activations explode or vanish through 100 layers, Xavier and Kaiming fix it.

    python init_demo.py                                   # every mode: table, JSON, PNG, TensorBoard
    python init_demo.py --mode tanh --mode tanh-xavier    # just these two
    python init_demo.py --all-layers                      # the std after each of the 100 layers
    tensorboard --logdir runs                             # activation std against layer, one line per mode

An MLP of --layers Linear(width, width, bias=False) layers on a batch of torch.randn inputs; after every
layer the std of the activations is recorded (in float64: float32's std() overflows near 1e37, though
the activations are still finite there), up to the first layer whose activations overflow float32. Each
mode reseeds, builds the network (PyTorch's default init draws first), applies its own init, then draws
the input, so its numbers are the same whichever modes run, and match the course's tables for the same
seed, down to the std-1 normal init's last finite std (layer 31: 2.0787e+37, the course's 2.0786820e+37).
"""
import json
import math

import torch
from torch import nn

from model import MLP
from model.init import kaiming_normal_manual_, xavier_uniform_manual_
from tools.cli.arguments import (
    ArgumentParser,
    add_common_args,
    int_between,
    run_script,
    seed_everything,
    select_device,
    tensorboard_command,
)
from tools.cli.errors import UserError
from tools.monitor.tensor_stats import grad_norms
from tools.training.run_dirs import new_run_dir

TANH_GAIN = nn.init.calculate_gain("tanh")  # 5/3
# mode -> (activation after every layer, init of every weight given its fan-in n)
MODES = {
    "normal": ("none", lambda w, n: nn.init.normal_(w)),
    "normal-scaled": ("none", lambda w, n: nn.init.normal_(w, std=math.sqrt(1 / n))),
    "tanh": ("tanh", lambda w, n: nn.init.normal_(w, std=math.sqrt(1 / n))),
    "tanh-xavier": ("tanh", lambda w, n: xavier_uniform_manual_(w, gain=TANH_GAIN)),
    "tanh-xavier-torch": ("tanh", lambda w, n: nn.init.xavier_uniform_(w, gain=TANH_GAIN)),
    "relu-normal-scaled": ("relu", lambda w, n: nn.init.normal_(w, std=math.sqrt(1 / n))),
    "relu-kaiming": ("relu", lambda w, n: kaiming_normal_manual_(w)),
    "relu-kaiming-torch": ("relu", lambda w, n: nn.init.kaiming_normal_(w)),
}
ALL_MODES = (*MODES, "gain")
TABLE_LAYERS = (1, 2, 3, 10, 50, 100)
HISTOGRAM_LAYERS = (1, 10, 50, 100)
VANISHED = 0.2    # std at the last layer below 0.2x its value after layer 1: vanishes
EXPLODED = 5.0    # above 5x, or NaN/Inf on the way: explodes
MAX_BYTES = 4 * 2**30  # the largest network (weights and activations) the lab builds


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", action="append", choices=ALL_MODES, default=None,
                        help="repeat to pick several (default: all, in the course's order)")
    parser.add_argument("--layers", type=int_between(1, 10_000), default=100, help="Linear layers in the MLP")
    parser.add_argument("--width", type=int_between(1, 16_384), default=256, help="units per layer")
    parser.add_argument("--batch", type=int_between(1, 65_536), default=16, help="inputs in the batch")
    parser.add_argument("--all-layers", action="store_true",
                        help="print the std after every layer (default: layers 1, 2, 3, 10, 50 and the last)")
    return add_common_args(parser, name="init")


def run_mode(mode: str, args, device: torch.device) -> dict:
    """Activation std after each layer (None after a blow-up), per-layer grad norms, and the activations
    at HISTOGRAM_LAYERS, for one mode."""
    activation, init = MODES[mode]
    seed_everything(args.seed)
    model = MLP(args.layers, args.width, activation)
    for layer in model.layers:
        init(layer.weight.data, args.width)
    model.to(device)
    x = torch.randn(args.batch, args.width).to(device)
    stds, kept, blew_up = [], {}, None
    for index, (layer, act) in enumerate(zip(model.layers, model.activations), start=1):
        # The product summed in float64 and rounded to float32 once: the same float32 activations on every
        # CPU (float32 sums, in the order a CPU's kernels pick, differ in the last digit after 100 layers)
        out = act(nn.functional.linear(x.double(), layer.weight.double())).float()
        if not torch.isfinite(out).all():  # one sync per layer is fine here: 100 tiny layers
            blew_up = index  # the activations themselves overflow float32
            break
        std = out.double().std()  # float32's std() overflows once |x| nears 1e37, before the activations do
        x = out
        stds.append(std.item())
        if index in HISTOGRAM_LAYERS:
            kept[index] = x.detach()
    # One backward pass of a simple loss (the mean of the last finite activations) through the layers
    # before any blow-up: vanishing and exploding gradients, next to the activations.
    if x.requires_grad:
        x.mean().backward()
    norms = grad_norms(model)
    grads = [norms.get(f"layers.{i}.weight") for i in range(args.layers)]
    return {"std": stds + [None] * (args.layers - len(stds)), "blew_up": blew_up,
            "grad_norm": [g if g is not None and math.isfinite(g) else None for g in grads], "activations": kept}


def verdict(result: dict) -> str:
    stds = result["std"]
    if result["blew_up"] or not stds[0]:
        return "explodes"
    ratio = stds[-1] / stds[0]
    return "explodes" if ratio > EXPLODED else "vanishes" if ratio < VANISHED else "steady"


def empirical_tanh_gain(seed: int) -> dict:
    """x.std() / tanh(x).std() on 10,000 standard-normal samples, beside calculate_gain('tanh')."""
    seed_everything(seed)
    x = torch.randn(10000)
    return {"empirical": (x.std() / torch.tanh(x).std()).item(), "calculate_gain": TANH_GAIN}


def cell(result: dict, layer: int, width: int = 12) -> str:
    """The std after `layer`, or where the activations overflowed (Inf@32: at layer 32)."""
    value = result["std"][layer - 1]
    return f"{value:{width}.4g}" if value is not None else f"{'Inf@' + str(result['blew_up']):>{width}}"


def format_table(results: dict, layers: int) -> str:
    """A row per mode, a column per layer of TABLE_LAYERS (and the last), and the verdict."""
    columns = sorted({n for n in TABLE_LAYERS if n < layers} | {layers})
    lines = [f"{'mode':<20}" + "".join(f"{'layer ' + str(n):>12}" for n in columns) + "  verdict"]
    for mode, result in results.items():
        lines.append(f"{mode:<20}" + "".join(cell(result, n) for n in columns) + f"  {verdict(result)}")
    return "\n".join(lines)


def format_all_layers(results: dict, layers: int) -> str:
    """A row per layer, a column per mode: every std the lab measured."""
    width = max(12, *(len(m) + 1 for m in results))
    lines = [f"{'layer':>5}" + "".join(f"{m:>{width}}" for m in results)]
    lines += [f"{n:>5}" + "".join(cell(r, n, width) for r in results.values()) for n in range(1, layers + 1)]
    return "\n".join(lines)


def main(args) -> dict:
    device = select_device(args.device)
    # the weights and the activations kept for backward, in float32
    needed = 4 * args.layers * args.width * (args.width + args.batch)
    if needed > MAX_BYTES:
        raise UserError(f"--layers {args.layers} x --width {args.width} (batch {args.batch}) needs about "
                        f"{needed / 2**30:.0f} GiB; keep it under {MAX_BYTES / 2**30:.0f} GiB")
    run_dir = new_run_dir(args.logdir, args.run_name)
    modes = args.mode or list(ALL_MODES)
    results = {mode: run_mode(mode, args, device) for mode in modes if mode != "gain"}
    stats = {mode: r["std"] for mode, r in results.items()}
    stats["grad_norms"] = {mode: r["grad_norm"] for mode, r in results.items()}
    if "gain" in modes:
        stats["gain"] = empirical_tanh_gain(args.seed)
    (run_dir / "init_stats.json").write_text(json.dumps(stats, indent=1) + "\n")

    if results:
        print(format_all_layers(results, args.layers) if args.all_layers else format_table(results, args.layers))
    for mode, result in results.items():
        if result["blew_up"]:
            last = result["blew_up"] - 1
            print(f"{mode}: the activations overflow float32 (Inf) at layer {result['blew_up']}"
                  + (f"; the last finite std, after layer {last}: {result['std'][last - 1]:.4e}" if last else ""))
    if "gain" in stats:
        print(f"tanh gain: empirical x.std() / tanh(x).std() = {stats['gain']['empirical']:.4f}, "
              f"nn.init.calculate_gain('tanh') = {TANH_GAIN:.4f}")

    from tools.pictures.plots import plot_activation_std
    from tools.tb.writer import log_args, open_writer

    if results:
        plot_activation_std({m: r["std"] for m, r in results.items()}, run_dir / "activation_std.png")
    with open_writer(run_dir) as writer:
        log_args(writer, vars(args) | {"device": device})
        if "gain" in stats:
            writer.add_text("gain", f"empirical {stats['gain']['empirical']:.4f}, calculate_gain {TANH_GAIN:.4f}")
    for mode, result in results.items():  # one sub-run per mode, same tags: the modes overlay in one chart
        with open_writer(run_dir / mode) as writer:
            for layer, (std, grad) in enumerate(zip(result["std"], result["grad_norm"]), start=1):
                if std is not None:  # the log10 too: one axis for every mode, 1e-16 to 1e37
                    writer.add_scalar("activation_std", std, layer)
                    writer.add_scalar("activation_std_log10", math.log10(std) if std > 0 else -45.0, layer)
                if grad is not None:
                    writer.add_scalar("grad_norm", grad, layer)
            for layer, values in result["activations"].items():
                writer.add_histogram(f"activations/{mode}", values.float().cpu(), layer)  # the card names the mode
    print(f"results in {run_dir} (init_stats.json, activation_std.png)\n"
          f"see them with: {tensorboard_command(args.logdir, run_dir)}")
    return {"run_dir": str(run_dir), "stats": stats, "verdicts": {m: verdict(r) for m, r in results.items()}}


if __name__ == "__main__":
    run_script(main, get_args_parser())
