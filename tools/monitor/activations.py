"""Activation statistics per layer, gathered by forward hooks: mean, std, dead ReLU units, and saturated
tanh / sigmoid outputs."""
import math
from contextlib import contextmanager

import torch
from torch import nn

from tools.monitor.hooks import hooks
from tools.monitor.tensor_stats import unwrap

RELUS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
SQUASHES = (nn.Tanh, nn.Sigmoid)  # outputs bounded: pinned at a limit, their gradient is ~0
DIAGNOSED = RELUS + SQUASHES      # the layers the verdict reads: activation_stats(model, types=DIAGNOSED)
SATURATION_MARGIN = 0.01          # an output within 1% of the layer's range from a limit is saturated


class ActivationStats:
    """Per-layer activation statistics gathered by forward hooks over one or more batches.

    For every hooked module: mean and std of its output (unless moments=False); for ReLU outputs also
    the fraction of units never active over all the batches seen: dead units. A unit is a feature of
    a linear layer's output, or a channel of a conv layer's (dead when zero everywhere, for every input).
    For tanh and sigmoid outputs: the fraction of values within SATURATION_MARGIN of a limit (saturated).
    """

    def __init__(self, moments: bool = True):
        self.moments = moments
        self._sums = {}     # name -> tensor [sum, sum of squares], on device
        self._counts = {}   # name -> number of values
        self._active = {}   # name -> bool tensor over units: ever > 0, on device
        self._pinned = {}   # name -> tensor [saturated values, values], on device

    def hook(self, name: str, module: nn.Module):
        is_relu = isinstance(module, RELUS)
        # tanh spans [-1, 1]: saturated above 1 - 2 x margin in magnitude; sigmoid [0, 1]: within margin of 0 or 1
        limit = (1 - 2 * SATURATION_MARGIN) if isinstance(module, nn.Tanh) else \
            (0.5 - SATURATION_MARGIN) if isinstance(module, nn.Sigmoid) else None

        def record(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                return
            out = output.detach()
            if self.moments:
                out32 = out.float()
                moments = torch.stack([out32.sum(), torch.linalg.vector_norm(out32).square()])
                self._sums[name] = self._sums[name] + moments if name in self._sums else moments
                self._counts[name] = self._counts.get(name, 0) + out.numel()
            if is_relu and out.dim() > 1:
                # a unit is a feature of a linear layer, a channel (a filter) of a conv layer; it is active
                # when its largest output over the batch (and positions) is > 0: one reduction, no mask
                active = out.amax(dim=(0, *range(2, out.dim()))) > 0
                if name in self._active:
                    torch.logical_or(self._active[name], active, out=self._active[name])
                else:
                    self._active[name] = active
            if limit is not None:
                centred = out.float() - (0.5 if isinstance(module, nn.Sigmoid) else 0.0)
                pinned = torch.stack([(centred.abs() > limit).sum().float(), centred.new_tensor(out.numel())])
                self._pinned[name] = self._pinned[name] + pinned if name in self._pinned else pinned
        return record

    def result(self) -> dict[str, dict[str, float]]:
        """name -> {'mean', 'std'}, for ReLUs {'dead'}, for tanh/sigmoid {'saturated'}, in forward order;
        one host copy for all."""
        names = list(dict.fromkeys([*self._sums, *self._active, *self._pinned]))
        if not names:
            return {}
        parts = [self._sums[n] for n in names if n in self._sums]
        parts += [a.float().mean().reshape(1) for n, a in self._active.items()]
        parts += list(self._pinned.values())
        values = iter(torch.cat(parts).tolist())  # one sync for all layers
        stats = {n: {} for n in names}
        for name in (n for n in names if n in self._sums):
            total, squares, count = next(values), next(values), self._counts[name]
            mean = total / count
            stats[name] = {"mean": mean, "std": math.sqrt(max(squares / count - mean * mean, 0.0))}
        for name in self._active:
            stats[name]["dead"] = 1.0 - next(values)
        for name in self._pinned:
            pinned, count = next(values), next(values)
            stats[name]["saturated"] = pinned / max(count, 1.0)
        return stats


@contextmanager
def activation_stats(model: nn.Module, enabled: bool = True, types: tuple = (nn.Module,), moments: bool = True):
    """Forward hooks on every leaf module for the duration of the block; yields an ActivationStats.

        with activation_stats(model) as acts:
            model(x)
        acts.result()  # {'conv1': {'mean': ..., 'std': ...}, 'relu1': {..., 'dead': 0.1}, ...}

    `types`: only leaf modules of these types; with types=DIAGNOSED and moments=False only dead units
    and saturation are counted, which is cheap. With enabled=False no hook is attached and the result is empty.
    """
    stats = ActivationStats(moments)
    leaves = [(n, m) for n, m in unwrap(model).named_modules()
              if enabled and n and not list(m.children()) and isinstance(m, types)]
    with hooks([m.register_forward_hook(stats.hook(n, m)) for n, m in leaves]):
        yield stats
