"""Forward hooks that are always removed: a context manager for hook handles, and the forward order of
a model's parameters (found with one hooked forward pass)."""
from contextlib import contextmanager

import torch
from torch import nn

from tools.monitor.tensor_stats import unwrap


@contextmanager
def hooks(handles: list):
    """Remove every hook handle on exit, whatever happens inside."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def forward_order(model: nn.Module, *inputs) -> list[str]:
    """Parameter names in the order the forward pass uses them (found with one hooked forward call)."""
    model = unwrap(model)
    seen, order = set(), []
    owners = {id(m): n for n, m in model.named_modules()}

    def record(module, _inputs):
        prefix = owners[id(module)]
        for name, _ in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if full not in seen:
                seen.add(full)
                order.append(full)

    with hooks([m.register_forward_pre_hook(record) for m in model.modules()]), torch.no_grad():
        model(*inputs)
    return order + [n for n, _ in model.named_parameters() if n not in seen]
