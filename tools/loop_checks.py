"""The training-loop mistakes the course warns about, caught at run time in any loop that uses the monitor.

`LoopWatch` sees the loop through a hook after the model's forward, one tensor hook on one small
parameter between an optimizer step and the next backward, and the loss's autograd graph:

- gradients accumulating (optimizer.zero_grad() missing): the watched parameter's .grad holds more than
  the gradients that reached it since the last optimizer step (checked at GRADIENT_CHECKS steps an epoch);
- evaluation in training mode (model.eval() missing): a forward pass that no backward follows (under
  torch.no_grad(), or with autograd on but no backward before the monitor's next after_backward or the
  epoch's end) with dropout or batch-norm layers in training mode;
- evaluation with autograd on (torch.no_grad() missing): a forward pass that records a graph no backward
  uses (in training mode: counted as above, at no cost to a training step; in eval mode, where training
  is rare, a hook on its output tells whether a backward came);
- a softmax before CrossEntropyLoss: its log_softmax fed by a softmax, in the loss's graph;
- inputs not normalised: the range of the epoch's first training batch.

Everything is counted per epoch; `figures()` gives them to the verdict and `new_epoch()` starts afresh.
The hooks stay while the watch is open: `close()` (or leaving a `with` block) removes them.
"""
import math
from contextlib import contextmanager

import torch
from torch import nn

from tools.verdict import ACCUMULATION_EXCESS

MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)  # behave differently in train()
GRAPH_NODES = 64  # how far back from the loss the softmax is looked for: the loss's own few nodes
GRADIENT_CHECKS = 8  # steps checked for accumulating gradients in each epoch: a missing zero_grad shows in all


def softmax_feeds_log_softmax(loss: torch.Tensor) -> bool:
    """True when the loss's graph has a log_softmax (CrossEntropyLoss's) whose input is a softmax's output:
    the loss was given probabilities, not logits. Walks at most GRAPH_NODES nodes back from the loss."""
    seen, queue = set(), [loss.grad_fn]
    while queue and len(seen) < GRAPH_NODES:
        node = queue.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        inputs = [next_node for next_node, _ in node.next_functions if next_node is not None]
        if type(node).__name__.startswith("LogSoftmaxBackward") and any(
                type(n).__name__.startswith("SoftmaxBackward") for n in inputs):
            return True
        queue.extend(inputs)
    return False


def distributed_world() -> int:
    """The number of processes training together (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LoopWatch:
    """The loop checks of one model (see the module's docstring); a new epoch starts with `new_epoch()`."""

    def __init__(self, model: nn.Module, enabled: bool = True):
        self.enabled = enabled
        self.mode_layers = [m for m in model.modules() if isinstance(m, MODE_LAYERS)]
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # the last parameter that trains (the head's bias, usually): small, so checking it costs nothing
        self.watched = trainable[-1] if trainable else None
        self._handles = [model.register_forward_hook(self._after_forward)] if enabled else []
        self._fresh = None         # the gradients that reached the watched parameter since the last step
        self._fresh_handle = None
        self._paused = False
        self._marks = []           # per eval-mode forward with autograd on: [whether a backward reached it]
        self.load_state_dict({})

    def close(self) -> None:
        """Remove every hook."""
        for handle in self._handles + ([self._fresh_handle] if self._fresh_handle else []):
            handle.remove()
        self._handles, self._fresh_handle = [], None

    def __enter__(self) -> "LoopWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def paused(self):
        """The monitor's own forward passes (the forward order) are not the loop's: not counted."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def state_dict(self) -> dict:
        """The epoch's counts so far (plain numbers), for a resume mid-epoch."""
        unbacked = self._unbacked()
        return {"counts": dict(self.counts), "inputs": self.inputs, "softmax": self.softmax,
                "accumulated": list(self.accumulated), "unbacked": unbacked}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; an empty dict starts a new epoch."""
        self.counts = dict(state.get("counts") or {"evaluations": 0, "eval_train_mode": 0, "eval_autograd": 0})
        self.inputs = state.get("inputs")            # the epoch's first training batch: min, max, mean, std
        self.softmax = state.get("softmax", False)   # a softmax before the loss's log_softmax
        self.softmax_checked = False
        self.accumulated = list(state.get("accumulated") or [])  # per checked step: the gradient's excess
        self._marks = []
        self._carried = state.get("unbacked", (0, 0))  # forwards of before a resume that had no backward
        # training-mode forwards with autograd on since the monitor's last after_backward (and of them,
        # with dropout/batch norm in training mode): a training step's, until its backward is reported
        self.since_backward = [0, 0]

    def new_epoch(self) -> None:
        """Start the next epoch's counts."""
        self.load_state_dict({})

    def _in_training_mode(self) -> bool:
        return any(m.training for m in self.mode_layers)

    def _measure_inputs(self, args) -> None:
        """The first training batch of the epoch: its range (one host copy per epoch)."""
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if x is None or not x.is_floating_point() or x.numel() == 0:
            return
        x = x.detach().float()
        spread = x.std() if x.numel() > 1 else x.new_zeros(())
        low, high, mean, std = torch.stack([x.min(), x.max(), x.mean(), spread]).tolist()
        self.inputs = {"min": low, "max": high, "mean": mean, "std": std}

    def _after_forward(self, module, args, output) -> None:
        """Count the forward pass: under no_grad, an evaluation; in training mode with autograd on, a
        training step's until the monitor hears of no backward; in eval mode with autograd on, marked."""
        if not self.enabled or self._paused:
            return
        if not torch.is_grad_enabled():
            self.counts["evaluations"] += 1
            self.counts["eval_train_mode"] += self._in_training_mode()
        elif module.training:
            if self.inputs is None:
                self._measure_inputs(args)
            self.since_backward[0] += 1
            self.since_backward[1] += self._in_training_mode()
        elif isinstance(output, torch.Tensor) and output.requires_grad:
            mark = [False]
            output.register_hook(lambda grad: mark.__setitem__(0, True))
            self._marks.append(mark)

    def backward_done(self) -> None:
        """The monitor heard of a backward (after_backward): the training forwards before it were trained on."""
        self.since_backward = [0, 0]

    def _unbacked(self) -> tuple[int, int]:
        """(forwards with autograd on that got no backward, of which in training mode), so far this epoch:
        eval-mode ones whose output got no gradient, and the training-mode ones since the last backward."""
        carried, unbacked_eval_mode = tuple(self._carried), sum(not m[0] for m in self._marks)
        return carried[0] + unbacked_eval_mode + self.since_backward[0], carried[1] + self.since_backward[1]

    def check_loss(self, loss: torch.Tensor) -> None:
        """Once per epoch: is the loss fed probabilities? (a walk over a few graph nodes, no host copy)"""
        if not self.softmax_checked and loss.grad_fn is not None:
            self.softmax = self.softmax or softmax_feeds_log_softmax(loss)
            self.softmax_checked = True

    def gradient_check(self) -> list[torch.Tensor]:
        """After a backward: [|grad - the gradients that reached it since the last step|, |those|] of the
        watched parameter, as device tensors for the monitor's one host copy; [] when not checked now."""
        if self._fresh_handle is not None:
            self._fresh_handle.remove()
            self._fresh_handle = None
        fresh, self._fresh = self._fresh, None
        param = self.watched[1] if self.watched else None
        if fresh is None or param is None or param.grad is None or param.grad.shape != fresh.shape:
            return []
        grad = param.grad.detach().float()
        return [torch.linalg.vector_norm(grad - fresh), torch.linalg.vector_norm(fresh)]

    def record_gradient_check(self, values: list[float]) -> None:
        """The host copy of `gradient_check()`: the excess of the gradient over the step's own."""
        if values:
            extra, own = values
            if math.isfinite(extra) and math.isfinite(own) and own > 0:
                self.accumulated.append(extra / own)

    def after_step(self) -> None:
        """After optimizer.step(): watch what reaches the watched parameter until the next backward ends.
        Not under torchrun (DDP averages .grad over the processes: it is no longer this process's sum)."""
        if len(self.accumulated) >= GRADIENT_CHECKS or not self.enabled or self.watched is None \
                or not self.watched[1].requires_grad or distributed_world() > 1:
            return
        if self._fresh_handle is not None:
            self._fresh_handle.remove()
        self._fresh = None

        def add(grad):
            grad = grad.detach().float()
            self._fresh = grad.clone() if self._fresh is None else self._fresh + grad

        self._fresh_handle = self.watched[1].register_hook(add)

    def figures(self) -> dict:
        """What the verdict reads of the loop, this epoch (see tools.verdict.EpochFigures.loop)."""
        unbacked, unbacked_train = self._unbacked()
        excess = sorted(self.accumulated)
        big = [x for x in excess if x > ACCUMULATION_EXCESS]
        return {"evaluations": self.counts["evaluations"] + unbacked,
                "eval_train_mode": self.counts["eval_train_mode"] + unbacked_train,
                "eval_autograd": unbacked,
                "train_mode_layers": ", ".join(sorted({type(m).__name__ for m in self.mode_layers})) or None,
                "softmax": self.softmax, "inputs": self.inputs,
                "accumulated": {"steps": len(big), "checked": len(excess),
                                "excess": big[len(big) // 2] if big else 0.0,
                                "where": self.watched[0] if self.watched else ""} if excess else None}

