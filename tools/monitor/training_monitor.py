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
inputs: see `tools.monitor.loop_checks`) and, given the splits (`check_data`), the data (leaks, missing
classes). Tell it which parameters are frozen on purpose (`frozen=['conv']`); then any other parameter
that does not move is named. Leave a `with monitor:` block (or call `close()`) to remove its hooks.

What is read at every step (cheaply: see `tools.monitor.steps`) is the base class's; this module adds the
epoch: histograms, the verdict, and the state a resumed run needs. The statistics live in
`tools.monitor.tensor_stats`, the rules of the verdict in `tools.monitor.verdict_rules`.
"""
import math

import torch
from torch import nn

from tools.monitor.arguments import check_arguments, check_epoch_arguments
from tools.monitor.data_findings import split_findings
from tools.monitor.epoch_figures import (
    ROUNDED_TO_ZERO,
    EpochFigures,
    Finding,
    decay_share,
    median_ratio,
    recalls,
    step_figures,
)
from tools.monitor.gradients import dense
from tools.monitor.hooks import forward_order
from tools.monitor.steps import StepWatch
from tools.monitor.tensor_stats import HIST_BINS, Histogram, histograms, identical_units
from tools.monitor.verdict import Verdict, judge
from tools.tb.writer import DEAD_UNITS, write_event


class TrainingMonitor(StepWatch):
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
        check_arguments(model, writer, log_interval, classes, optimizer, frozen, bins)
        super().__init__(model, writer, log_interval, enabled, None, optimizer)
        self.optimizer = optimizer
        self.frozen_prefixes = frozen
        self.bins = bins
        self.class_names = [str(c) for c in (classes if isinstance(classes, (list, tuple)) else range(classes or 0))]
        self.classes = len(self.class_names) or None
        self.loop.classes = self.classes or 0
        self.data_findings: list[Finding] = []
        self.load_state_dict({})

    def __enter__(self) -> "TrainingMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_data(self, splits: dict[str, tuple]) -> list[Finding]:
        """Check the splits once (name -> (images tensor (N, ...), targets); 'train' is the reference):
        a leak (the same image in train and another split) or a class missing is reported in every
        verdict from the first epoch on. Returns the findings."""
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
        return {"epochs": self.epochs, "first_total_norm": self.first_total_norm, **self.step_state(),
                "history": [dict(h) for h in self.history], "first_seen": dict(self.first_seen),
                "first_label": dict(self.first_label), "last_findings": list(self.last_findings)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; an empty dict is a fresh monitor."""
        self.load_step_state(state)
        self.epochs = state.get("epochs", 0)                      # verdicts given: the epochs judged
        self.first_total_norm = state.get("first_total_norm")     # total grad norm at the first verdict
        self.history = [dict(h) for h in state.get("history") or []]  # per epoch judged: the rules' series
        self.first_seen = dict(state.get("first_seen") or {})     # finding name -> the epoch it first appeared
        self.first_label = dict(state.get("first_label") or {})   # ... as end_epoch's label named it
        self.last_findings = list(state.get("last_findings") or [])  # the names found the epoch before

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

    def _learn_classes(self, confusion, loop: dict, accuracy: bool) -> None:
        """Classes not given: from the confusion matrix, or the model's outputs per sample (two or more)
        when the loss's graph or an accuracy shows a classifier. Until then, and for a regression, None."""
        if self.classes is not None:
            return
        width = len(confusion) if confusion else loop.get("output_width")
        if width and width >= 2 and (confusion or accuracy or loop.get("classifier")):
            self.classes, self.class_names = width, [str(c) for c in range(width)]
            self.loop.classes = width

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
        trained = bool(self._step_losses or any(self.grads.had_grad) or self._epoch_taken)
        unchanged, frozen = self.grads.unchanged(self.optimizer, self.frozen_prefixes, trained,
                                                 self.hooked and not self._epoch_taken)
        # the verdict's gradients and updates: of the parameters that train (one left out of the optimizer
        # keeps summing its gradients, and never moves: unchanged-weights names it, nothing else)
        left_out = {n for n, why in unchanged.items() if why != ROUNDED_TO_ZERO}
        norms, ratios = self.grads.means(left_out)
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
        steps = step_figures(self._step_losses, self.classes)
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
                                     decay_share(self.optimizer), lr, confusion, list(self.last_findings),
                                     {"forwards": loop["grad_forwards"], "steps": taken} if self.hooked else None,
                                     self.class_names or None, max(self.steps, step or 0),
                                     identical=identical_units([(n, q) for n, q in self.model.named_parameters()
                                                                if q.requires_grad])))
        previous = set(self.last_findings)
        label = label or f"epoch {self.epochs}"
        for finding in verdict.findings:
            self.first_seen.setdefault(finding.name, self.epochs)
            self.first_label.setdefault(finding.name, label)
        verdict.since, verdict.previous, verdict.labels = dict(self.first_seen), previous, dict(self.first_label)
        self.last_findings = [f.name for f in verdict.findings]
        if self.writer is not None:
            dead = {name: stats["dead"] for name, stats in (activations or {}).items() if "dead" in stats}
            self._write(step, {DEAD_UNITS: dead} if dead else {})
            text = f"{label}: {verdict.status}\n\n" + "\n\n".join(verdict.lines())  # a paragraph per finding
            write_event(self.writer, step, histograms=hists, texts={"diagnosis": text})
        self.load_state_dict({"epochs": self.epochs, "first_total_norm": self.first_total_norm,  # a new epoch
                              "epoch_steps": step - self.last_epoch_step, "last_epoch_step": step,
                              "history": self.history, "first_seen": self.first_seen, "first_label": self.first_label,
                              "last_findings": self.last_findings, "steps": self.steps,
                              "lr": dict(self._lr, low=0), "first_loss": self.first_loss})
        return verdict
