"""The training monitor: what a training loop calls to see inside its model, logged to TensorBoard.

A few lines in any training loop (the model may be wrapped in DistributedDataParallel):

    monitor = TrainingMonitor(model, writer)
    for step, (x, y) in enumerate(loader, start=1):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        loss_value = monitor.after_backward(step, loss)  # loss and gradient norms, non-finite check
        if monitor.nonfinite:                            # (step, what, first bad parameter)
            break
        optimizer.step()
        monitor.after_step(step, {LOSS: {"train": loss_value}})  # with the update ratios of logging steps
    verdict = monitor.end_epoch(step, loss_value, valid=evaluate(...))  # histograms, and a verdict
    print("\n".join(verdict.lines()))  # one line per finding, worst first

The monitor also watches the loop itself for the course's mistakes (a missing zero_grad, validation in
training mode or with autograd on, a softmax before the loss, unnormalised inputs: see
`tools.loop_checks`) and, given the splits (`check_data`), the data (leaks, missing classes). Tell it
which parameters are frozen on purpose (`frozen=['conv']`); then any other parameter that does not
move is named. Leave a `with monitor:` block (or call `close()`) to remove its hooks.

Everything is computed on the tensors' own device and copied to the host once per step (the loss
and every gradient norm together), never with one `.item()` per parameter. The statistics live in
`tools.tensor_stats`, the rules of the verdict in `tools.verdict`; this module only calls them.
"""
import math

import torch
from torch import nn

from tools.hooks import forward_order
from tools.loop_checks import LoopWatch
from tools.tb_logging import DEAD_UNITS, GRAD_NORM, UPDATE_RATIO, write_event, write_lines
from tools.tensor_stats import HIST_BINS, Histogram, histograms, tensor_norms, unwrap
from tools.verdict import DIVERGED_LOSS_FACTOR, SPIKE_FACTOR, EpochFigures, Finding, Verdict, judge, median_ratio


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
                 bins: int = HIST_BINS, classes: int | list[str] = 2, optimizer: torch.optim.Optimizer | None = None,
                 frozen: list[str] | None = None):
        """`classes`: their number, or their names; `optimizer`: to tell why a parameter did not move (not
        in it, or a zero learning rate); `frozen`: the name prefixes of parameters frozen on purpose
        (None: any parameter with requires_grad False is taken as frozen on purpose; a list: only those,
        and any other one is a finding)."""
        self.model = unwrap(model)
        self.optimizer = optimizer
        self.frozen_prefixes = frozen
        self.writer = writer
        self.log_interval = log_interval
        self.bins = bins
        self.class_names = [str(c) for c in (classes if isinstance(classes, (list, tuple)) else range(classes))]
        self.classes = len(self.class_names)
        # every parameter: a frozen one may be unfrozen later; one without a gradient in a step (frozen,
        # unused by forward, a branch not taken) is left out of that step's figures, not of the epoch's
        self.names = [n for n, _ in self.model.named_parameters()]
        self.params = [p for _, p in self.model.named_parameters()]
        self.order = self.names      # parameter names in forward order, once set_forward_order is called
        self._nonfinite = None       # (step, what) of the first non-finite loss or gradient
        self._before = None          # weights before a logged optimizer step
        self._pending = None         # (step, lines) of a logging step, written by after_step
        self.loop = LoopWatch(self.model, enabled)
        self.enabled = enabled
        self.data_findings: list[Finding] = []
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
        """Remove the monitor's hooks from the model."""
        self.loop.close()

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
                "last_epoch_step": self.last_epoch_step,
                "norm_sum": self._norm_sum, "norm_steps": self._norm_steps,
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
        # per parameter, over the epoch: grad norms summed, and the steps in which it had a gradient;
        # update ratios summed over the logged steps, and their count
        self._norm_sum = per_parameter(state.get("norm_sum"), n, 0.0)
        self._norm_steps = per_parameter(state.get("norm_steps"), n, 0)
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

    def after_backward(self, step: int, loss: torch.Tensor, also: torch.Tensor | None = None):
        """Check the loss and gradients for NaN/Inf and log gradient norms; returns the loss as a float,
        or with `also` (a scalar tensor, e.g. the batch's correct count) (loss, also) as floats.

        One host copy per step: the loss, `also`, and when monitoring, every parameter's gradient norm.
        """
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None] if self.enabled else []
        grads = [self.params[i].grad for i in with_grad]
        first = [loss.detach().float()] + ([also.detach().float()] if also is not None else [])
        self.loop.backward_done()
        check = self.loop.gradient_check() if self.enabled else []  # is zero_grad missing?
        if self.enabled:
            self.loop.check_loss(loss)  # a softmax before the loss? (once per epoch, no host copy)
        # one fused call for all parameters' norms, one sync per step for them, the loss, `also` and the check
        values = torch.stack([*first, *check, *(torch._foreach_norm(grads) if grads else [])]).tolist()
        value, extra = values[0], values[1:len(first)]
        self.loop.record_gradient_check(values[len(first):len(first) + len(check)])
        norms = values[len(first) + len(check):]
        result = (value, extra[0]) if also is not None else value
        if self.enabled:
            self._step_losses.append(value)
            self.first_loss = value if self.first_loss is None else self.first_loss
        if not grads:
            if not math.isfinite(value):
                self._record_nonfinite(step, "loss")
            return result
        total = math.sqrt(sum(n * n for n in norms))
        if not math.isfinite(value) or not math.isfinite(total):
            self._record_nonfinite(step, "loss" if not math.isfinite(value) else "gradient", norms)
        for i, norm in zip(with_grad, norms):  # the verdict uses each parameter's mean over the epoch
            self._norm_sum[i] += norm
            self._norm_steps[i] += 1
        logging = step % self.log_interval == 0
        if logging:
            self._write_pending()
            # written by after_step together with the update ratios: a line per layer in one chart
            by_layer = layer_norms([self.names[i] for i in with_grad], norms)
            self._pending = (step, {GRAD_NORM: {f"layers/{layer}": v for layer, v in by_layer.items()}
                                    | {"layers/total": total}})
        # update ratios: on logging steps, and at least once in every epoch however short (the verdict's
        # learning-rate rules read them): at its first step when epochs are shorter than the log interval
        # (or the first epoch's length is not known yet); TensorBoard gets them on logging steps only
        short_epochs = self.epoch_steps is None or self.epoch_steps < self.log_interval
        if logging or (short_epochs and not any(self._ratio_steps)):
            self._before = (with_grad, [self.params[i].detach().clone() for i in with_grad], logging)
        if self._nonfinite is not None:  # the loop will stop before after_step: write the norms now
            self._write_pending()
        return result

    def nonfinite_elsewhere(self, step: int) -> None:
        """Under torchrun: another rank saw a non-finite loss or gradient at `step` (this one did not)."""
        if self._nonfinite is None:
            self._nonfinite = (step, f"non-finite loss or gradient on another rank at step {step}")

    def after_step(self, step: int, lines: dict | None = None) -> None:
        """After optimizer.step(): `lines` (tag -> {line: value}, e.g. {LOSS: {'train': 0.5}}: the step's
        own figures, see `write_lines`) and, on a logging step, the update-to-weight ratio
        |W_new - W_old| / |W_old| of every layer, and the step's gradient norms: a line per layer."""
        lines = dict(lines or {})
        self.loop.after_step()
        if self._before is not None:  # the parameters that had a gradient, before the step
            trained, before, logging = self._before
            deltas = torch._foreach_sub([self.params[i].detach() for i in trained], before)
            norms = tensor_norms([*before, *deltas]).tolist()  # one fused call, one sync: |W_old|, |update|
            n = len(trained)
            ratios = [update / max(weight, 1e-12) for weight, update in zip(norms[:n], norms[n:])]
            for i, ratio in zip(trained, ratios):
                self._ratio_sum[i] += ratio
                self._ratio_steps[i] += 1
            self._before = None
            names = [self.names[i] for i in trained]
            weight, update = layer_norms(names, norms[:n]), layer_norms(names, norms[n:])
            if logging:  # TensorBoard gets them on logging steps only
                lines[UPDATE_RATIO] = {f"layers/{layer}": update[layer] / max(w, 1e-12) for layer, w in weight.items()}
            if self._pending:  # this step's gradient norms
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
        if norms is None:  # monitoring off: look at the gradients now, once
            norms = [torch.linalg.vector_norm(p.grad).item() for p in self.params if p.grad is not None]
        bad = {n for n, v in zip(names, norms) if not math.isfinite(v)}
        first = next((n for n in self.order if n in bad), None)
        detail = f"non-finite {what} at step {step}" + (f"; first parameter with a non-finite gradient: {first}"
                                                        if first else "")
        if self.first_loss is not None and math.isfinite(self.first_loss) and \
                self.first_loss > DIVERGED_LOSS_FACTOR * math.log(max(self.classes, 2)):
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
        tensors += [g for _, g in with_grad]
        return dict(zip(tags, histograms(tensors, self.bins)))

    def log_histograms(self, step: int) -> dict[str, Histogram]:
        """`parameter_histograms()`, written to TensorBoard; returns them."""
        result = self.parameter_histograms()
        if self.writer is not None:
            write_event(self.writer, step, histograms=result)
        return result

    def _unchanged_and_frozen(self) -> tuple[dict[str, str], list[str]]:
        """({parameter: why it did not move}, [parameters frozen on purpose]) over the epoch."""
        declared = self.frozen_prefixes
        groups = {id(p): g for g in self.optimizer.param_groups for p in g["params"]} if self.optimizer else None
        unchanged, frozen = {}, []
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            if not p.requires_grad:
                if declared is None or any(name.startswith(prefix) for prefix in declared):
                    frozen.append(name)
                else:
                    unchanged[name] = "requires_grad is False"
            elif self._step_losses and not self._norm_steps[i]:
                unchanged[name] = "no gradient in any step (forward does not use it)"
            elif groups is not None and id(p) not in groups:
                unchanged[name] = "not in the optimizer"
            elif groups is not None and groups[id(p)]["lr"] == 0:
                unchanged[name] = "its parameter group's lr is 0"
            elif self._ratio_steps[i] and self._ratio_sum[i] == 0:
                unchanged[name] = "every measured update was 0"
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

    def _step_figures(self) -> dict:
        """The epoch's step losses: median, max, and the spikes (above SPIKE_FACTOR x both the chance
        level and the median)."""
        losses = sorted(v for v in self._step_losses if math.isfinite(v))
        if not losses:
            return {}
        median, chance = losses[len(losses) // 2], math.log(max(self.classes, 2))
        spikes = sum(v > SPIKE_FACTOR * max(median, chance) for v in losses)
        return {"median": median, "max": losses[-1], "spikes": spikes}

    def end_epoch(self, step: int, train_loss: float, activations: dict | None = None,
                  label: str | None = None, train_acc: float | None = None, valid: dict | None = None) -> Verdict | None:
        """Histograms of the epoch, and the verdict on it (printed by the caller, logged as text here).

        `step`: the global step that ends the epoch (TensorBoard's x axis); `train_acc` and `valid`
        (`evaluate`'s {'loss', 'acc', 'confusion'}), when given, let the verdict see overfitting and
        plateaus. The monitor counts the epochs itself, so the verdict text names the epoch ('epoch 3'),
        unless `label` names it otherwise. The histograms, the verdict (`diagnosis`, one line per finding)
        and the dead-unit shares go to TensorBoard in one event."""
        if not self.enabled:
            return None
        self._write_pending()
        self.epochs += 1
        hists = self.parameter_histograms()
        bad = [t for t, h in hists.items() if h.nan or h.inf]
        norms = {n: v / k for n, v, k in zip(self.names, self._norm_sum, self._norm_steps) if k}
        ratios = {n: v / k for n, v, k in zip(self.names, self._ratio_sum, self._ratio_steps) if k}
        norms = {n: norms[n] for n in self.order if n in norms}
        unchanged, frozen = self._unchanged_and_frozen()
        total = math.sqrt(sum(v * v for v in norms.values())) if norms else None
        if self.first_total_norm is None and total and math.isfinite(total):
            self.first_total_norm = total
        nonfinite = self._nonfinite[1] if self._nonfinite else (f"NaN/Inf in {', '.join(bad)}" if bad else None)
        steps = self._step_figures()
        valid = valid or {}
        self.history.append({"train_loss": train_loss, "train_acc": train_acc, "valid_loss": valid.get("loss"),
                             "valid_acc": valid.get("acc"), "median_ratio": median_ratio(ratios),
                             "spikes": steps.get("spikes")})
        confusion = valid.get("confusion")
        predicted = torch.as_tensor(confusion).sum(0).tolist() if confusion is not None else None
        verdict = judge(EpochFigures(norms, train_loss, self.classes, self.first_total_norm, ratios,
                                     activations or {}, nonfinite, frozen, steps, self.history,
                                     self.loop.figures(), unchanged, self.data_findings, predicted, self.first_loss,
                                     self._decay()))
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
                              "last_findings": self.last_findings,
                              "first_loss": self.first_loss})
        return verdict
