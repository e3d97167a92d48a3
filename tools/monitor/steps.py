"""What the monitor reads at every step: the loss, the gradients as the optimizer is about to use them, the
update ratios, the learning rate, the first NaN or Inf; and the lines TensorBoard gets on logging steps.

`TrainingMonitor` is a StepWatch that also judges each epoch; this module is its per-step half, kept
cheap: one host copy per step (the loss, and the first gradient's norm for NaN/Inf), and every gradient
norm in one fused call and one copy at every MEASURE_EVERY-th step, never one `.item()` per parameter.
"""
import math

import torch
from torch import nn

from tools.monitor.epoch_figures import DIVERGED_LOSS_FACTOR, LARGE_UPDATE_RATIO, LR_COLLAPSED, UPDATE_RATIO_SLOW
from tools.monitor.gradients import EpochGradients, dense, layer_norms
from tools.monitor.loop_checks import LoopWatch
from tools.monitor.tensor_stats import unwrap
from tools.tb.writer import GRAD_NORM, UPDATE_RATIO, write_lines

MEASURE_EVERY = 8  # every parameter's gradient norm is read at every 8th step (and every logging step)
# TensorBoard's update-ratio chart: two flat lines around the healthy updates (about 1e-3), in log10 as the
# ratios are: below 1e-4 a net that does not learn is not moving; above 3e-2 updates kill units
HEALTHY_BAND = {"healthy_low": math.log10(UPDATE_RATIO_SLOW), "healthy_high": math.log10(LARGE_UPDATE_RATIO)}


def log10(value: float) -> float:
    """log10 for TensorBoard's lines (norms and ratios span 1e-12 to 1e3: a linear axis shows them all);
    0 (an update rounded away) as -30."""
    return math.log10(value) if value > 0 else -30.0


class StepWatch:
    """The per-step half of the monitor: `after_backward`, `after_step` and the optimizer's step hooks.

    With an optimizer, its step pre- and post-hooks read the gradients (unscaled behind a GradScaler,
    after clipping, summed over micro-batches; a skipped step never reaches step()), its learning rate
    and the update ratios. The epoch's sums live in `self.grads` (`EpochGradients`)."""

    def __init__(self, model: nn.Module, writer, log_interval: int, enabled: bool, classes: int | None,
                 optimizer: torch.optim.Optimizer | None):
        self.model = unwrap(model)
        self.writer = writer
        self.log_interval = log_interval
        self.classes = classes
        # every parameter: a frozen one may be unfrozen later; one without a gradient in a step (frozen,
        # unused by forward, a branch not taken) is left out of that step's figures, not of the epoch's
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = [p for _, p in self.model.named_parameters()]
        self.grads = EpochGradients(self.names, self.params)  # the epoch's norms and update ratios, summed
        self.order = self.names      # parameter names in forward order, once set_forward_order is called
        self._forward_index = list(range(len(self.params)))  # ... as indices into self.params
        self._nonfinite = None       # (step, what) of the first non-finite loss or gradient
        self._pending = None         # (step, lines) of a logging step, written by after_step
        self._announced = None       # the step number after_backward gave, until the optimizer's step
        self.loop = LoopWatch(self.model, enabled, optimizer, classes or 0)
        self.enabled = enabled
        self.steps = 0               # optimizer steps taken (watched through its hooks)
        self._lr = {"max": 0.0, "now": None, "low": 0}
        self._step_hooks = [optimizer.register_step_pre_hook(self._before_step),
                            optimizer.register_step_post_hook(self._after_step_hook)] if optimizer is not None else []

    @property
    def enabled(self) -> bool:
        """Monitoring on (False: only the non-finite check and the step's own figures); the loop checks follow."""
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = self.loop.enabled = on

    def close(self) -> None:
        """Remove the hooks from the model and the optimizer."""
        self.loop.close()
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []

    def step_state(self) -> dict:
        """The per-step half of `state_dict()`."""
        return {"epoch_steps": self.epoch_steps, "last_epoch_step": self.last_epoch_step, "steps": self.steps,
                "lr": dict(self._lr), "epoch_taken": self._epoch_taken, **self.grads.state_dict(),
                "step_losses": list(self._step_losses), "loop": self.loop.state_dict(), "first_loss": self.first_loss}

    def load_step_state(self, state: dict) -> None:
        """Restore `step_state()`; an empty dict is a fresh watch."""
        self.epoch_steps = state.get("epoch_steps")               # steps in the last epoch judged
        self.last_epoch_step = state.get("last_epoch_step", 0)    # the step that ended it
        self.grads.load_state_dict(state)
        self.steps = state.get("steps", self.steps)
        self._lr = dict(state.get("lr") or self._lr)
        self._epoch_taken = state.get("epoch_taken", 0)  # optimizer steps taken this epoch
        self._step_losses = list(state.get("step_losses") or [])  # the epoch's step losses (spikes)
        self.loop.load_state_dict(state.get("loop") or {})
        self.first_loss = state.get("first_loss")                 # the run's first step loss, before any update

    @property
    def nonfinite(self) -> tuple[int, str] | None:
        """(step, what) of the first non-finite loss or gradient seen, or None."""
        return self._nonfinite

    @property
    def hooked(self) -> bool:
        """The optimizer's steps are watched: gradients are read when it is about to use them."""
        return bool(self._step_hooks)

    def after_backward(self, step: int, loss: torch.Tensor, also: torch.Tensor | None = None):
        """After a backward: the loss (and the loss-graph checks), and, when the monitor does not watch an
        optimizer, the gradients (norms and NaN/Inf); returns the loss as a float, or with `also` (a scalar
        tensor, e.g. the batch's correct count) (loss, also) as floats.

        With an optimizer the gradients are read in its step instead (see `_before_step`): unscaled behind
        a GradScaler, after clipping, summed over micro-batches, and never for a step the scaler skips.
        One host copy: the loss, `also`, and without an optimizer every gradient norm with them.
        """
        self._announced = step
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"after_backward(step, loss): loss must be the scalar loss tensor that backward() was "
                            f"called on, not {type(loss).__name__}" + (f" of shape {tuple(loss.shape)}"
                                                                        if isinstance(loss, torch.Tensor) else ""))
        first = [loss.detach().float().reshape(())] + ([also.detach().float().reshape(())] if also is not None else [])
        self.loop.backward_done()
        if self.enabled:
            self.loop.check_loss(loss)  # a softmax before the loss, a wrong loss? (once per epoch, no host copy)
        if self.hooked or not self.enabled:
            values = [first[0].item()] if len(first) == 1 else torch.stack(first).tolist()
        else:
            values = self._read_gradients(step, first)
        value = values[0]
        if self.enabled:
            self._step_losses.append(value)
            self.first_loss = value if self.first_loss is None else self.first_loss
        if not math.isfinite(value):
            self._record_nonfinite(step, "loss")
        return (value, values[1]) if also is not None else value

    def _read_gradients(self, step: int, first: list[torch.Tensor]) -> list[float]:
        """The gradients of one step, and `first` (scalar tensors, e.g. the loss), in one host copy; returns
        the values of `first`.

        Every step: the norm of the first gradient in forward order, for NaN/Inf (a NaN or Inf anywhere in
        backward reaches the first parameter, upstream of everything). Every MEASURE_EVERY-th step, on
        logging steps, at an epoch's first step and whenever that norm is not finite: every parameter's
        norm (the verdict's epoch means, TensorBoard's lines, and the first bad parameter's name). That
        keeps a step's cost to a few small ops on most steps."""
        grads = [p.grad for p in self.params]
        self.grads.saw(grads)
        check = self.loop.gradient_check()  # is zero_grad missing? (a few steps an epoch)
        sentinel = self._first_gradient(grads)
        scalars = [*first, *check, *([torch.linalg.vector_norm(dense(sentinel))] if sentinel is not None else [])]
        values = ([scalars[0].item()] if len(scalars) == 1 else torch.stack(scalars).tolist()) if scalars else []
        n_first, n_check = len(first), len(check)
        self.loop.record_gradient_check(values[n_first:n_first + n_check])
        finite = all(math.isfinite(v) for v in values[:min(n_first, 1)] + values[n_first + n_check:])
        logging = step % self.log_interval == 0
        if sentinel is not None and (not finite or logging or step % MEASURE_EVERY == 0 or not self.grads.measured):
            self._measure_gradients(step, logging, values[0] if first else None)
        elif not finite:
            self._record_nonfinite(step, "loss")
        return values[:n_first]

    def _first_gradient(self, grads: list) -> torch.Tensor | None:
        """The gradient of the first parameter in forward order that has one (grads: per parameter)."""
        return next((grads[i] for i in self._forward_index if grads[i] is not None), None)

    def _measure_gradients(self, step: int, logging: bool, loss: float | None) -> None:
        """Every parameter's gradient norm (one fused call, one host copy): summed for the verdict, kept
        for TensorBoard on logging steps, checked for NaN/Inf; and the weights before the step, for the
        update ratios."""
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        norms = torch.stack(torch._foreach_norm([dense(self.params[i].grad) for i in with_grad])).float().tolist()
        total = math.sqrt(sum(v * v for v in norms))
        self.grads.add_norms(with_grad, norms)
        if loss is not None and not math.isfinite(loss):
            self._record_nonfinite(step, "loss", norms)
        elif not math.isfinite(total):
            self._record_nonfinite(step, "gradient", norms)
        if logging:
            self._write_pending()
            by_layer = layer_norms([self.names[i] for i in with_grad], norms)
            self._pending = (step, {GRAD_NORM: {layer: log10(v) for layer, v in (by_layer | {"total": total}).items()}})
        # update ratios: on logging steps, and at least once in every epoch however short (the verdict's
        # learning-rate rules read them): at its first step when epochs are shorter than the log interval
        # (or the first epoch's length is not known yet); TensorBoard gets them on logging steps only
        short_epochs = self.epoch_steps is None or self.epoch_steps < self.log_interval
        if logging or (short_epochs and not self.grads.ratios_measured):
            self.grads.keep_weights(with_grad, logging)
        if self._nonfinite is not None:  # the loop will stop before the step: write the norms now
            self._write_pending()

    def _before_step(self, optimizer, args, kwargs) -> None:
        """The optimizer's step pre-hook: the gradients it is about to use (unscaled behind a GradScaler,
        whose skipped steps never come here), and its learning rate."""
        self.loop.backward_done()  # the training forwards since the last step were trained on
        step = self._announced if self._announced is not None else self.steps + 1
        if not self.enabled:  # the NaN/Inf check stays (every process of a torchrun stops at the same step)
            first = self._first_gradient([p.grad for p in self.params])
            if first is not None and not math.isfinite(torch.linalg.vector_norm(dense(first)).item()):
                self._record_nonfinite(step, "gradient")
            return
        self._write_pending()
        self._read_gradients(step, [])
        lr = max((float(g["lr"]) for g in optimizer.param_groups), default=0.0)
        self._lr["max"] = max(self._lr["max"], lr)
        self._lr["now"] = lr
        self._lr["low"] += lr < LR_COLLAPSED * self._lr["max"]

    def _after_step_hook(self, optimizer, args, kwargs) -> None:
        """The optimizer's step post-hook: the update ratios; the step counted."""
        self.steps += 1
        self._epoch_taken += 1
        step = self._announced if self._announced is not None else self.steps
        self._announced = None
        if self.enabled:
            self._measure_step(step)

    def _measure_step(self, step: int) -> None:
        """After the optimizer's step: the loop's check armed; on a measuring step, the update ratios,
        kept with the step's norms as the lines TensorBoard gets next (`_pending`)."""
        self.loop.after_step()
        ratios = self.grads.add_ratios()
        if ratios:  # TensorBoard gets them on logging steps only
            pending_step, pending = self._pending or (step, {})
            self._pending = (pending_step, pending | {UPDATE_RATIO: {layer: log10(r) for layer, r in ratios.items()}
                                                      | HEALTHY_BAND})

    def nonfinite_elsewhere(self, step: int) -> None:
        """Under torchrun: another rank saw a non-finite loss or gradient at `step` (this one did not)."""
        if self._nonfinite is None:
            self._nonfinite = (step, f"non-finite loss or gradient on another rank at step {step}")

    def after_step(self, step: int, lines: dict | None = None) -> None:
        """After optimizer.step(): `lines` (tag -> {line: value}, e.g. {LOSS: {'train': 0.5}}: the step's
        own figures, see `write_lines`) and, on a logging step, the update-to-weight ratio
        |W_new - W_old| / |W_old| of every layer, and the step's gradient norms: a line per layer."""
        lines = dict(lines or {})
        if not self.hooked and self.enabled:
            self._measure_step(step)
        if self._pending is not None:
            lines |= self._pending[1]
            self._pending = None
        self._write(step, lines)

    def _write(self, step: int, lines: dict) -> None:
        if lines and self.writer is not None:
            write_lines(self.writer, step, lines)

    def _write_pending(self) -> None:
        """The gradient norms of a logging step that no after_step followed, written on their own."""
        if self._pending is not None:
            self._write(*self._pending)
        self._pending = None

    def _grad_names(self) -> list[str]:
        return [n for n, p in zip(self.names, self.params) if p.grad is not None]

    def _record_nonfinite(self, step: int, what: str, norms: list | None = None) -> None:
        """Remember the first non-finite loss or gradient: the step, and the first parameter in forward
        order whose gradient norm is NaN or Inf (NaN/Inf values, or values so large the norm overflows)."""
        if self._nonfinite is not None:
            return
        names = self._grad_names()
        if norms is None:  # look at the gradients now, once
            norms = [torch.linalg.vector_norm(dense(p.grad)).item() for p in self.params if p.grad is not None]
        bad = {n for n, v in zip(names, norms) if not math.isfinite(v)}
        first = next((n for n in self.order if n in bad), None)
        detail = f"non-finite {what} at step {step}" + (f"; first parameter with a non-finite gradient: {first}"
                                                        if first else "")
        if self.first_loss is not None and math.isfinite(self.first_loss) and \
                self.classes and self.first_loss > DIVERGED_LOSS_FACTOR * math.log(max(self.classes, 2)):
            detail += (f" (the first step's loss, before any update, was already {self.first_loss:.3g}: the init or the "
                       "inputs, not the learning rate)")
        self._nonfinite = (step, detail)
