"""Learning-rate schedules: the course's schedulers, with the course's settings, side by side; the values
printed, drawn and written to TensorBoard.

    python -m tools.lr_schedules                       # runs/<time>_lr_schedules/lr_schedules.png + TensorBoard
    python -m tools.lr_schedules --epochs 50 --lr 0.1

Every scheduler is stepped once per epoch, after the optimizer's step, and the lr read from the optimizer
before the step (the course's plot_lr steps first, so its curves start one epoch late). The optimizer has
two parameter groups, base (--lr) and fc (--lr / 2, as the course's fc group: 0.05 at lr 0.1); LambdaLR and
MultiplicativeLR give each its own factor, the others move both alike.
"""
from pathlib import Path

import torch
from torch.optim import lr_scheduler


FC_LR_SHARE = 0.5  # the fc group's lr: 0.05 beside the base group's 0.1
PRINTED_EPOCHS = (0, 1, 9, 10, 19, 20, 30, 50, 99)  # the epochs whose lr the command prints


def every_10_epochs(factor: float):
    """MultiplicativeLR's lambda: x factor at every 10th epoch, x1 in between."""
    return lambda epoch: factor if epoch % 10 == 0 else 1.0


def course_schedulers(epochs: int) -> dict:
    """The course's settings of each scheduler: name -> a function of the optimizer. The optimizer has
    two parameter groups, base and fc; LambdaLR and MultiplicativeLR give each its own lambda."""
    return {
        "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=30, gamma=0.1),
        "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[20, 35, 45], gamma=0.5),
        "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
        "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-5),
        "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2),
        "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=25, step_size_down=10),
        "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=epochs),
        "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lr_lambda=[lambda e: 0.1 ** (e // 20), lambda e: 0.95 ** e]),
        "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lr_lambda=[every_10_epochs(0.5),
                                                                                   every_10_epochs(0.8)]),
        # driven by a valid loss that never improves: cut x0.1 once 10 epochs pass without a better one
        "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, mode="min", factor=0.1, patience=10),
    }


PER_GROUP = ("LambdaLR", "MultiplicativeLR")  # the schedulers whose two groups follow two curves
PLATEAU_LOSS = 0.5  # the course's constant valid loss that drives ReduceLROnPlateau


def lr_curves(epochs: int = 100, lr: float = 0.1) -> dict[str, dict[str, list[tuple]]]:
    """name -> {group: [(epoch, lr)]} for the course's schedulers with the course's settings, each
    stepped once per epoch and read from the optimizer (group 'base'; 'fc' too for PER_GROUP)."""
    curves = {}
    for name, make in course_schedulers(epochs).items():
        groups = [{"params": [torch.zeros(1, requires_grad=True)], "name": "base"},
                  {"params": [torch.zeros(1, requires_grad=True)], "name": "fc", "lr": lr * FC_LR_SHARE}]
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9)
        scheduler = make(optimizer)
        points = {g["name"]: [] for g in optimizer.param_groups[:2 if name in PER_GROUP else 1]}
        for epoch in range(epochs):
            for group in optimizer.param_groups[:len(points)]:
                points[group["name"]].append((epoch, group["lr"]))
            optimizer.step()
            scheduler.step(PLATEAU_LOSS) if name == "ReduceLROnPlateau" else scheduler.step()
        curves[name] = points
    return curves


def format_values(curves: dict, epochs: int) -> str:
    """A row per scheduler (and group), the lr at each of PRINTED_EPOCHS within the run."""
    shown = [e for e in PRINTED_EPOCHS if e < epochs]
    lines = [f"{'scheduler':<32}" + "".join(f"{'epoch ' + str(e):>10}" for e in shown)]
    for name, groups in curves.items():
        for group, points in groups.items():
            label = name + (f" ({group})" if len(groups) > 1 else "")
            lines.append(f"{label:<32}" + "".join(f"{points[e][1]:>10.4g}" for e in shown))
    return "\n".join(lines)


def plot_lr_curves(curves: dict, path: Path) -> Path:
    """One panel per scheduler, lr against epoch (a line per group where they differ), into a PNG."""
    from tools.pictures.plots import pyplot

    plt = pyplot()
    cols = 3
    rows = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), dpi=90, squeeze=False)
    for ax, (name, groups) in zip(axes.flat, curves.items()):
        for group, points in groups.items():
            ax.plot(*zip(*points), linewidth=1.5, label=f"{group} group" if len(groups) > 1 else None)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("lr", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def get_args_parser():
    from tools.cli.arguments import ArgumentParser, add_common_args, int_between, positive_float

    parser = ArgumentParser(description="Plot lr against epoch for the course's schedulers, with its settings.",
                            prog="python -m tools.lr_schedules")
    parser.add_argument("--epochs", type=int_between(1, 10_000), default=100, help="epochs on the x axis")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="initial (or maximum) learning rate")
    return add_common_args(parser, name="lr_schedules", device=False)


def main(args) -> dict:
    from tools.cli.arguments import tensorboard_command
    from tools.pictures.plots import png_to_array
    from tools.tb.writer import open_writer
    from tools.training.run_dirs import new_run_dir

    run_dir = new_run_dir(args.logdir, args.run_name)
    curves = lr_curves(args.epochs, args.lr)
    path = plot_lr_curves(curves, run_dir / "lr_schedules.png")
    with open_writer(run_dir) as writer:
        for name, groups in curves.items():
            for group, points in groups.items():
                for epoch, value in points:
                    writer.add_scalar(f"lr_schedule/{name}" + ("" if group == "base" else f"/{group}"), value, epoch)
        writer.add_image("lr_schedules", png_to_array(path), 0, dataformats="HWC")
    print(format_values(curves, args.epochs))
    print(f"wrote {path}\nsee it with: {tensorboard_command(args.logdir, run_dir)}")
    return {"run_dir": str(run_dir), "curves": curves}


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
