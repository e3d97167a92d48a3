"""Learning-rate schedules: the ones train_rmb.py offers, and the course's schedulers, with the course's
settings, side by side.

    python -m tools.lr_schedules                       # runs/<time>_lr_schedules/lr_schedules.png + TensorBoard
    python -m tools.lr_schedules --epochs 50 --lr 0.1
"""
from pathlib import Path

import torch
from torch.optim import lr_scheduler


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
        "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lr_lambda=[lambda e: 0.95, lambda e: 0.9]),
        # driven by a valid loss that never improves: cut x0.1 after 10 epochs, then 10 epochs of cooldown
        "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, factor=0.1, patience=10, cooldown=10,
                                                                      min_lr=1e-4),
    }


PER_GROUP = ("LambdaLR", "MultiplicativeLR")  # the schedulers whose two groups follow two curves
PLATEAU_LOSS = 0.5  # the course's constant valid loss that drives ReduceLROnPlateau


def lr_curves(epochs: int = 100, lr: float = 0.1) -> dict[str, dict[str, list[tuple]]]:
    """name -> {group: [(epoch, lr)]} for the course's schedulers with the course's settings, each
    stepped once per epoch and read from the optimizer (group 'base'; 'fc' too for PER_GROUP)."""
    curves = {}
    for name, make in course_schedulers(epochs).items():
        groups = [{"params": [torch.zeros(1, requires_grad=True)], "name": g} for g in ("base", "fc")]
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
    return add_common_args(parser, name="lr_schedules")


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
    print(f"wrote {path}\nsee it with: {tensorboard_command(run_dir)}")
    return {"run_dir": str(run_dir), "curves": curves}


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
