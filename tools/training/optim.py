"""The optimizers the course compares, parameter groups with their own learning rates, and finetuning:
loading the weights that fit, freezing layers."""
from pathlib import Path

import torch
from torch import nn

from tools.cli.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "asgd")
DEFAULT_MOMENTUM = {"sgd": 0.9, "rmsprop": 0.0}  # the course's SGD momentum; RMSprop's own default


def head_name(model: nn.Module) -> str:
    """The last layer with parameters (LeNet: fc3), in registration order."""
    layers = [name for name, module in model.named_modules() if list(module.parameters(recurse=False))]
    return layers[-1]


def parameter_groups(model: nn.Module, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
    """One group of every parameter at `lr`; with head_lr_mult != 1, the last layer in a group of its
    own at lr x head_lr_mult (the course's finetuning: a new head learns fast, the rest slowly).
    Each group has a 'name' ('all', or 'body' and 'head'), which the learning-rate logs use."""
    if head_lr_mult == 1:
        return [{"name": "all", "params": list(model.parameters()), "lr": lr}]
    head = head_name(model) + "."
    named = list(model.named_parameters())
    return [{"name": "body", "params": [p for n, p in named if not n.startswith(head)], "lr": lr},
            {"name": "head", "params": [p for n, p in named if n.startswith(head)], "lr": lr * head_lr_mult}]


def effective_momentum(name: str, momentum: float | None) -> float | None:
    """The momentum the optimizer `name` runs with: --momentum, else its default (SGD 0.9, the course's;
    RMSprop 0); None for an optimizer without one."""
    return DEFAULT_MOMENTUM.get(name) if momentum is None else momentum


def build_optimizer(name: str, groups: list[dict], momentum: float | None = None, weight_decay: float = 0.0,
                    nesterov: bool = False) -> torch.optim.Optimizer:
    """The optimizer `name` over `groups` (each with its own lr). momentum: SGD's (default 0.9) and
    RMSprop's (default 0); giving it to another optimizer, or nesterov to any but SGD, is a UserError."""
    if momentum is not None and name not in DEFAULT_MOMENTUM:
        raise UserError(f"--momentum is for --optimizer sgd or rmsprop, not {name}: drop it")
    if nesterov and name != "sgd":
        raise UserError(f"--nesterov is for --optimizer sgd, not {name}: drop it")
    momentum = effective_momentum(name, momentum)
    if nesterov and not momentum:
        raise UserError("--nesterov needs a --momentum above 0")
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=momentum, weight_decay=weight_decay)
    make = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
            "adamax": torch.optim.Adamax, "asgd": torch.optim.ASGD}[name]
    return make(groups, weight_decay=weight_decay)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of every parameter group: group name ('all', or 'body' and 'head') -> lr."""
    return {str(group.get("name", index)): group["lr"] for index, group in enumerate(optimizer.param_groups)}


def load_matching(model: nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """The course's finetuning load: the weights of `path` (a train_rmb.py checkpoint, or a plain
    state_dict) whose name and shape fit `model`, loaded into it. Returns (loaded, left at their init).
    UserError for a file that cannot be read or that fits nothing."""
    from tools.training.checkpoint import load_checkpoint

    saved = load_checkpoint(path)
    state = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--finetune {path} holds no weights (a checkpoint or a state_dict of tensors)")
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    if not fitting:
        raise UserError(f"--finetune {path}: none of its weights fits this model (names or shapes differ)")
    model.load_state_dict(fitting, strict=False)
    return list(fitting), [k for k in own if k not in fitting]


def freeze_for_epoch(model: nn.Module, prefixes: list[str] | None, freeze_epochs: int, epoch: int) -> list[str]:
    """The course's schedule: the parameters of `prefixes` frozen for the first `freeze_epochs` epochs
    (0: for all of them), trained from then on. epoch: 1-based. Returns the names frozen now."""
    if not prefixes:
        return []
    frozen = not freeze_epochs or epoch <= freeze_epochs
    names = freeze(model, prefixes, frozen)
    return names if frozen else []


def freeze(model: nn.Module, prefixes: list[str], frozen: bool = True) -> list[str]:
    """requires_grad = not frozen for every parameter whose name starts with one of `prefixes`; returns
    their names. A frozen parameter gets no gradient, so the optimizer leaves it as it is."""
    names = [n for n, p in model.named_parameters() if any(n.startswith(prefix) for prefix in prefixes)]
    if not names:
        raise UserError(f"--freeze {','.join(prefixes)} names no parameter; the model's layers are "
                        f"{', '.join(dict.fromkeys(n.rsplit('.', 1)[0] for n, _ in model.named_parameters()))}")
    if frozen and len(names) == sum(1 for _ in model.parameters()):  # nothing left to train: no backward at all
        raise UserError(f"--freeze {','.join(prefixes)} freezes every parameter of the model, so nothing would "
                        "train; leave at least one layer out of it (e.g. --freeze conv to train the fc layers)")
    for name, p in model.named_parameters():
        if name in names:
            p.requires_grad_(not frozen)
    return names
