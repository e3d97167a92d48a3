"""Learning-rate schedules: the ones train_rmb.py offers, and a chart of PyTorch's schedulers side by side.

    python -m tools.lr_schedules                       # runs/<time>_lr_schedules/lr_schedules.png + TensorBoard
    python -m tools.lr_schedules --epochs 50 --lr 0.1
"""
import math
from pathlib import Path

import torch
from torch.optim import lr_scheduler

SCHEDULERS = ("step", "multistep", "exponential", "cosine", "plateau")
PLATEAU_PATIENCE = 2   # epochs without a better valid loss before ReduceLROnPlateau cuts the rate


def build_scheduler(name: str, optimizer, epochs: int, step_size: int, gamma: float):
    """The scheduler behind train_rmb.py --scheduler, stepped once per epoch.

    step: x gamma every step_size epochs (the course's StepLR); multistep: x gamma at 50% and 75% of the
    epochs; exponential: x gamma ** (1 / step_size) every epoch, so x gamma over step_size epochs like
    step, but smoothly; cosine: cosine annealing to 0 over the epochs; plateau: x gamma when the valid
    loss has not improved for PLATEAU_PATIENCE epochs (step it with the valid loss).
    """
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multistep":
        return lr_scheduler.MultiStepLR(optimizer, milestones=[max(1, epochs // 2), max(2, epochs * 3 // 4)],
                                        gamma=gamma)
    if name == "exponential":
        return lr_scheduler.ExponentialLR(optimizer, gamma=gamma ** (1 / step_size))
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=gamma, patience=PLATEAU_PATIENCE)
    raise ValueError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")


def step_scheduler(scheduler, valid_loss: float) -> dict[str, float]:
    """Step a scheduler at the end of an epoch (ReduceLROnPlateau with the valid loss); returns the
    learning rates the epoch trained with, as TensorBoard tags: 'lr' (the first parameter group), and
    'lr/<group name>' for the others."""
    from tools.optim import learning_rates

    rates = learning_rates(scheduler.optimizer)
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_loss)
    else:
        scheduler.step()
    return rates


def synthetic_valid_loss(epoch: int) -> float:
    """A valid loss that falls, then flattens out with small wiggles: what drives ReduceLROnPlateau here."""
    return 0.3 + 0.7 * math.exp(-epoch / 8) + 0.02 * math.sin(epoch * 1.3)


def lr_curves(epochs: int = 100, lr: float = 0.1, steps_per_epoch: int = 10) -> dict[str, list[tuple]]:
    """name -> [(epoch, lr)] for each of PyTorch's common schedulers, read from get_last_lr().

    Epoch-wise schedulers are stepped once per epoch; CyclicLR and OneCycleLR, which are meant to be
    stepped every batch, `steps_per_epoch` times per epoch (x is then a fraction of an epoch).
    """
    def optimizer():
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=0.9)

    per_epoch = {
        "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=max(1, epochs // 3), gamma=0.1),
        "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[epochs // 2, epochs * 3 // 4], gamma=0.1),
        "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.1 ** (3 / epochs)),
        "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=epochs),
        "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=max(1, epochs // 7),
                                                                                          T_mult=2),
        "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + 0.1 * e)),
    }
    per_batch = {
        "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=lr / 10, max_lr=lr,
                                                    step_size_up=max(1, epochs * steps_per_epoch // 8)),
        "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=lr, total_steps=epochs * steps_per_epoch),
    }
    curves = {}
    for name, make in per_epoch.items():
        scheduler = make(optimizer())
        points = []
        for epoch in range(epochs):
            points.append((epoch, scheduler.get_last_lr()[0]))
            scheduler.optimizer.step()
            scheduler.step()
        curves[name] = points
    for name, make in per_batch.items():
        scheduler = make(optimizer())
        points = []
        for step in range(epochs * steps_per_epoch):
            points.append((step / steps_per_epoch, scheduler.get_last_lr()[0]))
            scheduler.optimizer.step()
            scheduler.step()
        curves[name] = points
    plateau = lr_scheduler.ReduceLROnPlateau(optimizer(), factor=0.5, patience=PLATEAU_PATIENCE)
    points = []
    for epoch in range(epochs):
        points.append((epoch, plateau.get_last_lr()[0]))
        plateau.step(synthetic_valid_loss(epoch))
    curves["ReduceLROnPlateau"] = points
    return curves


def plot_lr_curves(curves: dict, path: Path) -> Path:
    """One panel per scheduler, lr against epoch, into a PNG. Returns path."""
    from tools.plots import pyplot

    plt = pyplot()
    cols = 3
    rows = (len(curves) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), dpi=90, squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        ax.plot(*zip(*points), linewidth=1.5)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("lr", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def get_args_parser():
    from tools.cli import ArgumentParser, add_common_args, int_between, positive_float

    parser = ArgumentParser(description="Plot lr against epoch for PyTorch's common schedulers.",
                            prog="python -m tools.lr_schedules")
    parser.add_argument("--epochs", type=int_between(1, 10_000), default=100, help="epochs on the x axis")
    parser.add_argument("--lr", type=positive_float, default=0.1, help="initial (or maximum) learning rate")
    return add_common_args(parser, name="lr_schedules")


def main(args) -> dict:
    from tools.plots import png_to_array
    from tools.run_folder import new_run_dir
    from tools.tb_logging import open_writer

    run_dir = new_run_dir(args.logdir, args.run_name)
    curves = lr_curves(args.epochs, args.lr)
    path = plot_lr_curves(curves, run_dir / "lr_schedules.png")
    with open_writer(run_dir) as writer:
        for name, points in curves.items():
            for epoch, value in points:
                if float(epoch).is_integer():  # per-batch schedules: their value at each epoch's start
                    writer.add_scalar(f"lr_schedule/{name}", value, int(epoch))
        writer.add_image("lr_schedules", png_to_array(path), 0, dataformats="HWC")
    print(f"wrote {path}\nsee it with: tensorboard --logdir {run_dir}")
    return {"run_dir": str(run_dir), "curves": curves}


if __name__ == "__main__":
    from tools.cli import run_script

    run_script(main, get_args_parser())
