"""One epoch's gradients and updates, per parameter: the sums the verdict's means come from.

    grads = EpochGradients(names, params)
    grads.add_norms(indices, norms)          # a measured step's gradient norms (one fused call upstream)
    grads.keep_weights(indices, logging)     # before optimizer.step() ...
    lines = grads.add_ratios()               # ... after it: |W_new - W_old| / |W_old| summed, per layer
    norms, ratios = grads.means(left_out)    # at the epoch's end: the mean of each, per parameter

Everything stays on the tensors' device until one fused norm call and one host copy per measured step.
"""
import math

import torch

from tools.monitor.epoch_figures import ROUNDED_TO_ZERO, UNUSED
from tools.monitor.tensor_stats import tensor_norms


def dense(grad: torch.Tensor) -> torch.Tensor:
    """A gradient's values: a sparse one's (nn.Embedding(sparse=True)) stored values, a dense one itself."""
    return grad.coalesce().values() if grad.is_sparse else grad


def per_parameter(saved: list | None, n: int, zero) -> list:
    """A per-parameter list as saved, or `n` zeros (a fresh epoch, or a checkpoint of before the monitor
    kept one number per parameter)."""
    return list(saved) if isinstance(saved, list) and len(saved) == n else [zero] * n


def layer_norms(names: list[str], norms: list[float]) -> dict[str, float]:
    """Per-parameter L2 norms -> per-layer ones (conv1.weight and conv1.bias -> conv1: the norm of both
    together), in order."""
    squares = {}
    for name, norm in zip(names, norms):
        layer = name.rsplit(".", 1)[0]
        squares[layer] = squares.get(layer, 0.0) + norm * norm
    return {layer: math.sqrt(total) for layer, total in squares.items()}


class EpochGradients:
    """Per parameter, over the epoch's measured steps (every MEASURE_EVERY-th, logging steps, the epoch's
    first): its gradient norms summed and the steps in which it had one; whether it had a gradient in any
    step at all (every step is looked at for that, at no cost); the update ratios summed over the steps
    they were measured in, and their count. Saved and restored with `state_dict()` / `load_state_dict()`."""

    KEYS = ("norm_sum", "norm_steps", "had_grad", "ratio_sum", "ratio_steps")

    def __init__(self, names: list[str], params: list[torch.Tensor]):
        self.names, self.params = names, params
        self._before = None  # (indices, weights before the step, logging) of a step whose update is measured
        self.load_state_dict({})

    def state_dict(self) -> dict:
        return {key: list(getattr(self, key)) for key in self.KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; an empty dict is a fresh epoch."""
        n = len(self.params)
        for key, zero in zip(self.KEYS, (0.0, 0, False, 0.0, 0)):
            setattr(self, key, per_parameter(state.get(key), n, zero))
        self.measured = any(self.norm_steps)  # this epoch's norms read at least once
        self._before = None

    def saw(self, grads: list) -> None:
        """Mark the parameters that have a gradient this step (grads: per parameter, None where none)."""
        if not all(g is not None for g in grads):
            for i, g in enumerate(grads):
                self.had_grad[i] = self.had_grad[i] or g is not None
        elif not self.had_grad[-1] or not self.had_grad[0]:
            self.had_grad = [True] * len(grads)

    def add_norms(self, indices: list[int], norms: list[float]) -> None:
        """A measured step: the gradient norms of the parameters at `indices`."""
        for i, norm in zip(indices, norms):
            self.norm_sum[i] += norm
            self.norm_steps[i] += 1
        self.measured = True

    def keep_weights(self, indices: list[int], logging: bool) -> None:
        """Before an optimizer step whose update is measured: a copy of the weights at `indices`."""
        self._before = (indices, [self.params[i].detach().clone() for i in indices], logging)

    def add_ratios(self) -> dict | None:
        """After that step: every update ratio |W_new - W_old| / |W_old| summed (one fused norm call, one
        sync); on a logging step, returns the per-layer ratios ({layer: ratio}), else None."""
        if self._before is None:
            return None
        trained, before, logging = self._before
        self._before = None
        deltas = torch._foreach_sub([self.params[i].detach() for i in trained], before)
        norms = tensor_norms([*before, *deltas]).tolist()  # |W_old|, |update|
        n = len(trained)
        for i, weight, update in zip(trained, norms[:n], norms[n:]):
            self.ratio_sum[i] += update / max(weight, 1e-12)
            self.ratio_steps[i] += 1
        if not logging:
            return None
        names = [self.names[i] for i in trained]
        weight, update = layer_norms(names, norms[:n]), layer_norms(names, norms[n:])
        return {layer: update[layer] / max(w, 1e-12) for layer, w in weight.items()}

    @property
    def ratios_measured(self) -> bool:
        return any(self.ratio_steps)

    def means(self, left_out: set[str]) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch's mean gradient norm and update ratio of each parameter not in `left_out`."""
        norms = {n: v / k for n, v, k in zip(self.names, self.norm_sum, self.norm_steps) if k and n not in left_out}
        ratios = {n: v / k for n, v, k in zip(self.names, self.ratio_sum, self.ratio_steps) if k and n not in left_out}
        return norms, ratios

    def unchanged(self, optimizer, frozen: list[str] | None, trained: bool,
                  hooked_idle: bool) -> tuple[dict[str, str], list[str]]:
        """({parameter: why it did not move}, [parameters frozen on purpose]) over the epoch. `frozen`: the
        name prefixes frozen on purpose (None: any with requires_grad False); `trained`: the epoch had
        steps; `hooked_idle`: the optimizer is watched and took no step. A group whose lr is 0 now is named
        only if its parameters did not move either (a schedule that ends at 0 moved them until then)."""
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]} if optimizer else None
        unchanged, kept = {}, []
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            if not p.requires_grad:
                if frozen is None or any(name.startswith(prefix) for prefix in frozen):
                    kept.append(name)
                else:
                    unchanged[name] = "requires_grad is False"
            elif groups is not None and id(p) not in groups:
                unused = "" if self.had_grad[i] else " (and no gradient in any step)"
                unchanged[name] = "not in the optimizer" + unused
            elif trained and not self.had_grad[i] and not hooked_idle:
                unchanged[name] = UNUSED
            elif groups is not None and groups[id(p)]["lr"] == 0 and not self.ratio_sum[i]:
                unchanged[name] = "its parameter group's lr is 0"
            elif self.ratio_steps[i] and self.ratio_sum[i] == 0:
                unchanged[name] = ROUNDED_TO_ZERO
        return unchanged, kept
