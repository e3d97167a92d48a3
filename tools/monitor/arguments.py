"""The monitor's public arguments, checked: a wrong one is a TypeError or ValueError that says what to
pass, raised where the user's code calls, never an error from deep inside torch later."""
import math

import torch
from torch import nn


def check_arguments(model, writer, log_interval, classes, optimizer, frozen, bins) -> None:
    """TrainingMonitor's arguments, each checked with a line that says what it takes (TypeError/ValueError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"TrainingMonitor(model, ...): model must be an nn.Module, not {type(model).__name__}")
    if writer is not None and not (hasattr(writer, "add_scalar") or hasattr(writer, "file_writer")
                                   or hasattr(writer, "_get_file_writer")):
        raise TypeError(f"TrainingMonitor(writer=...): a SummaryWriter (or RunWriter), or None; not {type(writer).__name__}")
    if isinstance(log_interval, bool) or not isinstance(log_interval, int) or log_interval < 1:
        raise ValueError(f"TrainingMonitor(log_interval=...): a whole number of steps >= 1, not {log_interval!r}")
    if classes is not None and (isinstance(classes, bool) or not (isinstance(classes, int) and classes >= 1 or
                                         isinstance(classes, (list, tuple)) and len(classes) >= 1)):
        raise ValueError(f"TrainingMonitor(classes=...): their number (>= 1), a list of their names, or None, "
                         f"not {classes!r}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"TrainingMonitor(model, ...): this {type(model).__name__} has no parameters, so there is "
                         "nothing to watch: pass the module that holds the weights you train")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("TrainingMonitor(model, ...): the model's parameters are on the meta device (shapes, no "
                         "values): materialise them first (model.to_empty(device=...) and an init), then build the monitor")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"TrainingMonitor(bins=...): the histograms' number of bins, a whole number >= 1, not {bins!r}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"TrainingMonitor(optimizer=...): a torch.optim.Optimizer, not {type(optimizer).__name__}")
    if frozen is not None and (isinstance(frozen, str) or not all(isinstance(f, str) for f in frozen)):
        raise TypeError(f"TrainingMonitor(frozen=...): a list of parameter-name prefixes (['conv1']), not {frozen!r}")


def check_epoch_arguments(train_loss, train_acc, valid) -> dict:
    """end_epoch's figures checked (TypeError with what it takes); returns `valid` as a dict."""
    for name, value in (("train_loss", train_loss), ("train_acc", train_acc)):
        if value is not None and not isinstance(value, (int, float, torch.Tensor)):
            raise TypeError(f"end_epoch({name}=...): a number, not {type(value).__name__}")
    if valid is not None and not isinstance(valid, dict):
        raise TypeError(f"end_epoch(valid=...): a dict such as {{'loss': 0.4, 'acc': 0.9, 'confusion': matrix}} "
                        f"(evaluate's), not {type(valid).__name__}")
    for name, value in (("train_acc", train_acc), ("valid={'acc': ...}", (valid or {}).get("acc"))):
        value = float(value) if isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool) else None
        if value is not None and math.isfinite(value) and not 0.0 <= value <= 1.0:  # NaN: not measured
            raise ValueError(f"end_epoch({name}): an accuracy is a fraction from 0 to 1 (95% is 0.95), not {value}")
    return valid or {}
