"""Stochastic weight averaging (Izmailov et al., 2018) in a training loop, with torch.optim.swa_utils:
from a chosen epoch on, the weights are averaged after every epoch (AveragedModel) while the SWALR
schedule holds the learning rate at --swa-lr; at the end, update_bn recomputes batch-norm statistics
for the averaged weights (LeNet has none: then it changes nothing)."""
import torch
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

ANNEAL_EPOCHS = 2  # epochs over which SWALR moves the learning rate to --swa-lr (cosine)


class WeightAveraging:
    """start: the first epoch (1-based) whose weights join the average; 0 turns it off."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, start: int, swa_lr: float):
        self.start = start
        self.model = AveragedModel(model) if start else None
        self.scheduler = SWALR(optimizer, swa_lr=swa_lr, anneal_epochs=ANNEAL_EPOCHS) if start else None

    def takes_over(self, epoch: int) -> bool:
        """True when epoch (1-based, just trained) is averaged and SWALR, not the usual schedule, steps."""
        return bool(self.start) and epoch >= self.start

    def update(self, model: torch.nn.Module, loader, criterion, device: torch.device, classes: int) -> dict:
        """Add the model's current weights to the average; returns the averaged model's figures on
        `loader` (`evaluate`'s). With batch norm they are approximate until `finish`."""
        from tools.training.engine import evaluate

        self.model.update_parameters(model)
        return evaluate(self.model, loader, criterion, device, classes)

    def finish(self, loader, device: torch.device) -> None:
        """Batch-norm statistics for the averaged weights: one pass over `loader` (nothing without BN)."""
        if self.model is not None:
            update_bn(loader, self.model, device)

    def state_dict(self) -> dict:
        if self.model is None:
            return {}
        return {"model": self.model.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.model is not None:
            self.model.load_state_dict(state["model"])
            self.scheduler.load_state_dict(state["scheduler"])
