"""The learning-rate schedulers train_rmb.py offers (--scheduler), built from its flags and stepped once per
epoch (ReduceLROnPlateau on the valid loss).
"""
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
    learning rates the epoch trained with: parameter group name -> lr."""
    from tools.training.optim import learning_rates

    rates = learning_rates(scheduler.optimizer)
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(valid_loss)
    else:
        scheduler.step()
    return rates
