"""The training monitor: what a training loop calls to see inside its model, logged to TensorBoard.

Two lines in any training loop (the model may be wrapped in DistributedDataParallel or torch.compile):

    monitor = TrainingMonitor(model, writer, optimizer=optimizer)   # hooks the optimizer's step
    ...                                                              # the loop, unchanged
    verdict = monitor.end_epoch(train_loss=..., valid={"loss": ..., "acc": ...})  # histograms, a verdict
    print("\n".join(verdict.lines()))  # one line per finding, worst first

The optimizer's step hooks read the gradients as it is about to use them (unscaled behind a GradScaler,
whose skipped steps never reach step(); after clipping; summed over micro-batches) and its learning
rate. More calls, more seen: `after_backward(step, loss)` after each backward gives the loss (spikes,
the first step's loss, a softmax or a wrong loss in its graph) and returns it as a float;
`after_step(step, lines)` writes the loop's own lines; `end_epoch(..., activations=...)` the dead and
saturated units of the valid pass. Without an optimizer, after_backward reads the gradients itself.

The monitor also watches the loop itself for the course's mistakes (a missing zero_grad, validation in
training mode or with autograd on, training in eval mode, a softmax or a wrong loss, unnormalised
inputs: see `tools.loop_checks`) and, given the splits (`check_data`), the data (leaks, missing
classes). Tell it which parameters are frozen on purpose (`frozen=['conv']`); then any other parameter
that does not move is named. Leave a `with monitor:` block (or call `close()`) to remove its hooks.

Everything is computed on the tensors' own device, with one host copy per step (the loss, and the first
gradient's norm for NaN/Inf), and every gradient norm in one fused call and one copy at every
MEASURE_EVERY-th step, never with one `.item()` per parameter. The statistics live in
`tools.tensor_stats`, the rules of the verdict in `tools.verdict`; this module only calls them.
"""
import math

import torch
from torch import nn

from tools.epoch_figures import (
    DIVERGED_LOSS_FACTOR,
    LR_COLLAPSED,
    ROUNDED_TO_ZERO,
    SPIKE_FACTOR,
    EpochFigures,
    Finding,
    median_ratio,
    recalls,
)
from tools.hooks import forward_order
from tools.loop_checks import LoopWatch
from tools.tb_logging import DEAD_UNITS, GRAD_NORM, UPDATE_RATIO, write_event, write_lines
from tools.tensor_stats import HIST_BINS, Histogram, histograms, tensor_norms, unwrap
from tools.monitor_arguments import check_arguments, check_epoch_arguments
from tools.verdict import Verdict, judge

SPIKE_WINDOW = 10  # a step's loss is compared with the median of the 10 before it
MEASURE_EVERY = 8  # every parameter's gradient norm is read at every 8th step (and every logging step)


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


class TrainingMonitor:
    """Gradient norms, update ratios and histograms of a model's parameters, logged to TensorBoard.

    Call `after_backward(step, loss)` after every backward, `after_step(step, lines)` after every
    optimizer step and `end_epoch(step, train_loss, activations)` once per epoch. Norms are logged
    every `log_interval` steps; histograms and the verdict once per epoch. With `enabled=False` only
    the non-finite loss check and the step's own figures remain. The monitor's state (the epoch count,
    the first total norm, the epoch's running sums) is saved and restored with `state_dict()` /
    `load_state_dict()`, so a resumed run judges as an uninterrupted one would.
    """

    def __init__(self, model: nn.Module, writer=None, log_interval: int = 10, enabled: bool = True,
                 bins: int = HIST_BINS, classes: int | list[str] | None = None, optimizer: torch.optim.Optimizer | None = None,
                 frozen: list[str] | None = None):
        """`classes`: their number, or their names (None: learned from the model's outputs when the loss or the
        accuracy shows a classifier; a regression has none, and the rules about chance stay off); `optimizer`: to tell why a parameter did not move (not
        in it, or a zero learning rate); `frozen`: the name prefixes of parameters frozen on purpose
        (None: any parameter with requires_grad False is taken as frozen on purpose; a list: only those,
        and any other one is a finding)."""
        check_arguments(model, writer, log_interval, classes, optimizer, frozen)
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.frozen_prefixes = frozen
        self.writer = writer
        self.log_interval = log_interval
        self.bins = bins
        self.class_names = [str(c) for c in (classes if isinstance(classes, (list, tuple)) else range(classes or 0))]
        self.classes = len(self.class_names) or None
        # every parameter: a frozen one may be unfrozen later; one without a gradient in a step (frozen,
        # unused by forward, a branch not taken) is left out of that step's figures, not of the epoch's
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = [p for _, p in self.model.named_parameters()]
        self.order = self.names      # parameter names in forward order, once set_forward_order is called
        self._forward_index = list(range(len(self.params)))  # ... as indices into self.params
        self._nonfinite = None       # (step, what) of the first non-finite loss or gradient
        self._before = None          # weights before a logged optimizer step
        self._pending = None         # (step, lines) of a logging step, written by after_step
        self._announced = None       # the step number after_backward gave, until the optimizer's step
        self.loop = LoopWatch(self.model, enabled, optimizer, self.classes or 0)
        self.enabled = enabled
        self.data_findings: list[Finding] = []
        self.steps = 0               # optimizer steps taken (watched through its hooks)
        self._lr = {"max": 0.0, "now": None, "low": 0}
        self._step_hooks = [optimizer.register_step_pre_hook(self._before_step),
                            optimizer.register_step_post_hook(self._after_step_hook)] if optimizer is not None else []
        self.load_state_dict({})

    @property
    def enabled(self) -> bool:
        """Monitoring on (False: only the non-finite check and the step's own figures); the loop checks follow."""
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = self.loop.enabled = on

    def __enter__(self) -> "TrainingMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the monitor's hooks from the model and the optimizer."""
        self.loop.close()
        for handle in self._step_hooks:
            handle.remove()
        self._step_hooks = []

    def check_data(self, splits: dict[str, tuple]) -> list[Finding]:
        """Check the splits once (name -> (images tensor (N, ...), targets); 'train' is the reference):
        a leak (the same image in train and another split) or a class missing is reported in every
        verdict from the first epoch on. Returns the findings."""
        from tools.data_checks import split_findings

        self.data_findings = split_findings(splits, self.class_names) if self.enabled else []
        return self.data_findings

    def set_forward_order(self, *example_inputs) -> None:
        """Learn the order in which forward uses the parameters (one hooked forward pass of an example
        batch), so that the first non-finite gradient is named correctly."""
        with self.loop.paused():
            self.order = forward_order(self.model, *example_inputs)
        index = {name: i for i, name in enumerate(self.names)}
        self._forward_index = [index[name] for name in self.order if name in index]

    def start(self, example: torch.Tensor, log_initial: bool = True, splits: dict | None = None) -> None:
        """Before training: the forward order (from one hooked pass of `example`); for a new run, the
        histograms of the initial weights at step 0, the first picture of training; with `splits`, the
        data checks (`check_data`)."""
        self.set_forward_order(example)
        if log_initial:
            self.log_histograms(0)
        if splits:
            self.check_data(splits)

    def state_dict(self) -> dict:
        """What a resumed run needs to judge as an uninterrupted one would: plain numbers and lists."""
        return {"epochs": self.epochs, "first_total_norm": self.first_total_norm, "epoch_steps": self.epoch_steps,
                "last_epoch_step": self.last_epoch_step, "steps": self.steps, "lr": dict(self._lr),
                "epoch_taken": self._epoch_taken,
                "norm_sum": self._norm_sum, "norm_steps": self._norm_steps, "had_grad": self._had_grad,
                "ratio_sum": self._ratio_sum, "ratio_steps": self._ratio_steps,
                "step_losses": list(self._step_losses), "loop": self.loop.state_dict(),
                "history": [dict(h) for h in self.history], "first_seen": dict(self.first_seen),
                "first_label": dict(self.first_label), "last_findings": list(self.last_findings), "first_loss": self.first_loss}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; an empty dict is a fresh monitor."""
        n = len(self.params)
        self.epochs = state.get("epochs", 0)                      # verdicts given: the epochs judged
        self.first_total_norm = state.get("first_total_norm")     # total grad norm at the first verdict
        self.epoch_steps = state.get("epoch_steps")               # steps in the last epoch judged
        self.last_epoch_step = state.get("last_epoch_step", 0)    # the step that ended it
        # per parameter, over the epoch's measured steps (every MEASURE_EVERY-th, logging steps, the epoch's
        # first): its gradient norms summed and the steps in which it had one; whether it had a gradient in
        # any step at all (every step is looked at for that, at no cost); below, the update ratios summed
        # over the steps they were measured in, and their count
        self._norm_sum = per_parameter(state.get("norm_sum"), n, 0.0)
        self._norm_steps = per_parameter(state.get("norm_steps"), n, 0)
        self._had_grad = per_parameter(state.get("had_grad"), n, False)
        self._measured = any(self._norm_steps)  # this epoch's norms read at least once
        self.steps = state.get("steps", getattr(self, "steps", 0))
        self._lr = dict(state.get("lr") or getattr(self, "_lr", {"max": 0.0, "now": None, "low": 0}))
        self._epoch_taken = state.get("epoch_taken", 0)  # optimizer steps taken this epoch
        self._ratio_sum = per_parameter(state.get("ratio_sum"), n, 0.0)
        self._ratio_steps = per_parameter(state.get("ratio_steps"), n, 0)
        self._step_losses = list(state.get("step_losses") or [])  # the epoch's step losses (spikes)
        self.loop.load_state_dict(state.get("loop") or {})
        self.history = [dict(h) for h in state.get("history") or []]  # per epoch judged: the rules' series
        self.first_seen = dict(state.get("first_seen") or {})     # finding name -> the epoch it first appeared
        self.first_label = dict(state.get("first_label") or {})   # ... as end_epoch's label named it
        self.last_findings = list(state.get("last_findings") or [])  # the names found the epoch before
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
        if not all(g is not None for g in grads):
            for i, g in enumerate(grads):
                self._had_grad[i] = self._had_grad[i] or g is not None
        elif not self._had_grad[-1] or not self._had_grad[0]:
            self._had_grad = [True] * len(grads)
        check = self.loop.gradient_check()  # is zero_grad missing? (a few steps an epoch)
        sentinel = self._first_gradient(grads)
        scalars = [*first, *check, *([torch.linalg.vector_norm(dense(sentinel))] if sentinel is not None else [])]
        values = ([scalars[0].item()] if len(scalars) == 1 else torch.stack(scalars).tolist()) if scalars else []
        n_first, n_check = len(first), len(check)
        self.loop.record_gradient_check(values[n_first:n_first + n_check])
        finite = all(math.isfinite(v) for v in values[:min(n_first, 1)] + values[n_first + n_check:])
        logging = step % self.log_interval == 0
        if sentinel is not None and (not finite or logging or step % MEASURE_EVERY == 0 or not self._measured):
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
        for i, norm in zip(with_grad, norms):
            self._norm_sum[i] += norm
            self._norm_steps[i] += 1
        self._measured = True
        if loss is not None and not math.isfinite(loss):
            self._record_nonfinite(step, "loss", norms)
        elif not math.isfinite(total):
            self._record_nonfinite(step, "gradient", norms)
        if logging:
            self._write_pending()
            by_layer = layer_norms([self.names[i] for i in with_grad], norms)
            self._pending = (step, {GRAD_NORM: {f"layers/{layer}": v for layer, v in by_layer.items()}
                                    | {"layers/total": total}})
        # update ratios: on logging steps, and at least once in every epoch however short (the verdict's
        # learning-rate rules read them): at its first step when epochs are shorter than the log interval
        # (or the first epoch's length is not known yet); TensorBoard gets them on logging steps only
        short_epochs = self.epoch_steps is None or self.epoch_steps < self.log_interval
        if logging or (short_epochs and not any(self._ratio_steps)):
            self._before = (with_grad, [self.params[i].detach().clone() for i in with_grad], logging)
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
        if self._before is None:
            return
        trained, before, logging = self._before
        deltas = torch._foreach_sub([self.params[i].detach() for i in trained], before)
        norms = tensor_norms([*before, *deltas]).tolist()  # one fused call, one sync: |W_old|, |update|
        n = len(trained)
        for i, weight, update in zip(trained, norms[:n], norms[n:]):
            self._ratio_sum[i] += update / max(weight, 1e-12)
            self._ratio_steps[i] += 1
        self._before = None
        if logging:  # TensorBoard gets them on logging steps only
            names = [self.names[i] for i in trained]
            weight, update = layer_norms(names, norms[:n]), layer_norms(names, norms[n:])
            lines = {UPDATE_RATIO: {f"layers/{layer}": update[layer] / max(w, 1e-12) for layer, w in weight.items()}}
            pending_step, pending = self._pending or (step, {})
            self._pending = (pending_step, pending | lines)

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

    def parameter_histograms(self) -> dict[str, Histogram]:
        """Weights and gradients of every parameter: tag (weights/<name>, grads/<name>) -> Histogram,
        which also counts NaN and Inf values."""
        if not self.enabled:
            return {}
        tags = [f"weights/{n}" for n in self.names]
        tensors = list(self.params)  # histograms() detaches
        with_grad = [(n, p.grad) for n, p in zip(self.names, self.params) if p.grad is not None]
        tags += [f"grads/{n}" for n, _ in with_grad]
        tensors += [dense(g) for _, g in with_grad]  # a sparse gradient: its stored rows
        return dict(zip(tags, histograms(tensors, self.bins)))

    def log_histograms(self, step: int) -> dict[str, Histogram]:
        """`parameter_histograms()`, written to TensorBoard; returns them."""
        result = self.parameter_histograms()
        if self.writer is not None:
            write_event(self.writer, step, histograms=result)
        return result

    def _unchanged_and_frozen(self, had_grad: list[bool]) -> tuple[dict[str, str], list[str]]:
        """({parameter: why it did not move}, [parameters frozen on purpose]) over the epoch. `had_grad`: per
        parameter, whether it had a gradient in some step. A group whose lr is 0 now is named only if its
        parameters did not move either (a schedule that ends at 0 moved them until then)."""
        declared = self.frozen_prefixes
        groups = {id(p): g for g in self.optimizer.param_groups for p in g["params"]} if self.optimizer else None
        trained = self._step_losses or any(had_grad) or self._epoch_taken
        unchanged, frozen = {}, []
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            if not p.requires_grad:
                if declared is None or any(name.startswith(prefix) for prefix in declared):
                    frozen.append(name)
                else:
                    unchanged[name] = "requires_grad is False"
            elif groups is not None and id(p) not in groups:
                unchanged[name] = "not in the optimizer" + ("" if had_grad[i] else " (and no gradient in any step)")
            elif trained and not had_grad[i] and not (self.hooked and not self._epoch_taken):
                unchanged[name] = "no gradient in any step (forward does not use it)"
            elif groups is not None and groups[id(p)]["lr"] == 0 and not self._ratio_sum[i]:
                unchanged[name] = "its parameter group's lr is 0"
            elif self._ratio_steps[i] and self._ratio_sum[i] == 0:
                unchanged[name] = ROUNDED_TO_ZERO
        return unchanged, frozen

    def _decay(self) -> float | None:
        """The largest share of the weights that weight decay alone removes per step, over the optimizer's
        groups: lr x weight_decay, divided by (1 - momentum) for SGD (momentum repeats it); None without one."""
        if self.optimizer is None:
            return None
        shares = [g.get("lr", 0.0) * g.get("weight_decay", 0.0) / max(1.0 - (g.get("momentum") or 0.0), 1e-3)
                  if isinstance(self.optimizer, torch.optim.SGD) else g.get("lr", 0.0) * g.get("weight_decay", 0.0)
                  for g in self.optimizer.param_groups]
        return max(shares, default=None)

    def _learn_classes(self, confusion, loop: dict, accuracy: bool) -> None:
        """Classes not given: from the confusion matrix, or the model's outputs per sample (two or more)
        when the loss's graph or an accuracy shows a classifier. Until then, and for a regression, None."""
        if self.classes is not None:
            return
        width = len(confusion) if confusion else loop.get("output_width")
        if width and width >= 2 and (confusion or accuracy or loop.get("classifier")):
            self.classes, self.class_names = width, [str(c) for c in range(width)]
            self.loop.classes = width

    def _step_figures(self) -> dict:
        """The epoch's step losses: median, max, and the spikes (above SPIKE_FACTOR x both the chance
        level and the median of the SPIKE_WINDOW steps before)."""
        finite = [v for v in self._step_losses if math.isfinite(v)]
        if not finite:
            return {}
        losses = sorted(finite)
        median, chance = losses[len(losses) // 2], math.log(max(self.classes, 2)) if self.classes else 0.0
        # against the median of the steps just before, not the epoch's: a loss that falls fast (a regression's
        # first epoch) has early steps far above the epoch's median, and none of them is a spike
        spikes = sum(v > SPIKE_FACTOR * max(sorted(before)[len(before) // 2], chance)
                     for i, v in enumerate(finite) if (before := finite[max(0, i - SPIKE_WINDOW):i]))
        quarter = max(1, len(finite) // 4)  # the mean loss of the epoch's first and last quarters (a trend)
        return {"median": median, "max": losses[-1], "spikes": spikes, "start": sum(finite[:quarter]) / quarter,
                "end": sum(finite[-quarter:]) / quarter}

    def end_epoch(self, step: int | None = None, train_loss: float | None = None, activations: dict | None = None,
                  label: str | None = None, train_acc: float | None = None, valid: dict | None = None) -> Verdict | None:
        """Histograms of the epoch, and the verdict on it (printed by the caller, logged as text here).

        `step`: the global step that ends the epoch (TensorBoard's x axis; default: the optimizer steps
        the monitor saw); `train_loss`: the epoch's mean (default: the mean of the losses given to
        after_backward, if any); `train_acc` and `valid` (`evaluate`'s {'loss', 'acc', 'confusion'}),
        when given, let the verdict see overfitting, plateaus and ignored classes; `activations`:
        `ActivationStats.result()` of the valid pass (dead and saturated units). The monitor counts the
        epochs itself, so the verdict text names the epoch ('epoch 3'), unless `label` names it
        otherwise. The histograms, the verdict (`diagnosis`, one line per finding) and the dead-unit
        shares go to TensorBoard in one event."""
        if not self.enabled:
            return None
        valid = check_epoch_arguments(train_loss, train_acc, valid)
        if step is None:
            step = self._announced if self._announced is not None else self.steps
        losses = [v for v in self._step_losses if math.isfinite(v)]
        if train_loss is None and self._step_losses:
            train_loss = sum(losses) / len(losses) if losses else float("nan")
        train_loss = float(train_loss) if train_loss is not None else None
        self._write_pending()
        self.epochs += 1
        hists = self.parameter_histograms()
        bad = [t for t, h in hists.items() if h.nan or h.inf]
        unchanged, frozen = self._unchanged_and_frozen(self._had_grad)
        # the verdict's gradients and updates: of the parameters that train (one left out of the optimizer
        # keeps summing its gradients, and never moves: unchanged-weights names it, nothing else)
        left_out = {n for n, why in unchanged.items() if why != ROUNDED_TO_ZERO}
        norms = {n: v / k for n, v, k in zip(self.names, self._norm_sum, self._norm_steps) if k and n not in left_out}
        ratios = {n: v / k for n, v, k in zip(self.names, self._ratio_sum, self._ratio_steps) if k and n not in left_out}
        norms = {n: norms[n] for n in self.order if n in norms}
        if isinstance(self.optimizer, torch.optim.LBFGS):  # quasi-Newton steps by line search: large by design,
            ratios = {}                                     # the update-ratio band (~1e-3) is first-order's
        total = math.sqrt(sum(v * v for v in norms.values())) if norms else None
        if self.first_total_norm is None and total and math.isfinite(total):
            self.first_total_norm = total
        nonfinite = self._nonfinite[1] if self._nonfinite else (f"NaN/Inf in {', '.join(bad)}" if bad else None)
        confusion = valid.get("confusion")
        confusion = torch.as_tensor(confusion).tolist() if confusion is not None else None
        loop = self.loop.figures()
        self._learn_classes(confusion, loop, train_acc is not None or valid.get("acc") is not None)
        steps = self._step_figures()
        self.history.append({"train_loss": train_loss, "train_acc": train_acc, "valid_loss": valid.get("loss"),
                             "valid_acc": valid.get("acc"), "median_ratio": median_ratio(ratios),
                             "spikes": steps.get("spikes"), "recalls": recalls(confusion)})
        predicted = [sum(column) for column in zip(*confusion)] if confusion else None
        taken = self._epoch_taken
        lr = ({"now": self._lr["now"], "max": self._lr["max"], "low_share": self._lr["low"] / taken}
              if self.hooked and taken and self._lr["now"] is not None else None)
        verdict = judge(EpochFigures(norms, train_loss, self.classes, self.first_total_norm, ratios,
                                     activations or {}, nonfinite, frozen, steps, self.history,
                                     loop, unchanged, self.data_findings, predicted, self.first_loss,
                                     self._decay(), lr, confusion, list(self.last_findings),
                                     {"forwards": loop["grad_forwards"], "steps": taken} if self.hooked else None,
                                     self.class_names or None, max(self.steps, step or 0)))
        previous = set(self.last_findings)
        label = label or f"epoch {self.epochs}"
        for finding in verdict.findings:
            self.first_seen.setdefault(finding.name, self.epochs)
            self.first_label.setdefault(finding.name, label)
        verdict.since, verdict.previous, verdict.labels = dict(self.first_seen), previous, dict(self.first_label)
        self.last_findings = [f.name for f in verdict.findings]
        if self.writer is not None:
            dead = {f"layers/{name}": stats["dead"] for name, stats in (activations or {}).items() if "dead" in stats}
            self._write(step, {DEAD_UNITS: dead} if dead else {})
            text = f"{label}: {verdict.status}\n\n" + "\n\n".join(verdict.lines())  # a paragraph per finding
            write_event(self.writer, step, histograms=hists, texts={"diagnosis": text})
        self.load_state_dict({"epochs": self.epochs, "first_total_norm": self.first_total_norm,  # a new epoch
                              "epoch_steps": step - self.last_epoch_step, "last_epoch_step": step,
                              "history": self.history, "first_seen": self.first_seen, "first_label": self.first_label,
                              "last_findings": self.last_findings, "steps": self.steps,
                              "lr": dict(self._lr, low=0), "first_loss": self.first_loss})
        return verdict
