"""The training-loop mistakes the course warns about, caught at run time in any loop that uses the monitor.

`LoopWatch` sees the loop through a hook after the model's forward, one tensor hook on one small
parameter between an optimizer step and the next backward, and the loss's autograd graph:

- gradients accumulating (optimizer.zero_grad() missing): the watched parameter's .grad holds more than
  the gradients that reached it since the last optimizer step (checked at GRADIENT_CHECKS steps an epoch).
  What is compared is the part of .grad that is not a multiple of those: clipping and a GradScaler's
  unscaling multiply the gradient by a number, which is not accumulation;
- evaluation in training mode (model.eval() missing): a forward pass that no backward follows (under
  torch.no_grad(), or with autograd on but no backward before the monitor's next after_backward or the
  epoch's end) with dropout or batch-norm layers in training mode;
- evaluation with autograd on (torch.no_grad() missing): a forward pass that records a graph no backward
  uses (in training mode: counted as above, at no cost to a training step; in eval mode, where training
  is rare, a hook on its output tells whether a backward came);
- training in eval mode (model.train() missing after a validation): a forward pass in eval mode, with
  dropout or batch-norm layers, whose output a backward reached;
- a bounded activation before CrossEntropyLoss (a softmax of any axis, a sigmoid, a tanh): its log_softmax
  fed by one, through ops that only move values, in the loss's graph;
- a wrong loss, in the loss's graph: a regression loss (MSE, L1, Huber) on a model with one output per
  sample for three or more classes (class indices fitted as numbers), probabilities given to
  BCEWithLogitsLoss (a sigmoid before it), NLLLoss on raw scores (no log_softmax before it);
- inputs not normalised: the range of the epoch's first training batch.

Everything is counted per epoch; `figures()` gives them to the verdict and `new_epoch()` starts afresh.
The hooks stay while the watch is open: `close()` (or leaving a `with` block) removes them.
"""
import math
from contextlib import contextmanager

import torch
from torch import nn

from tools.monitor.epoch_figures import ACCUMULATION_EXCESS

MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)  # behave differently in train()
GRAPH_NODES = 64  # how far back from the loss the softmax is looked for: the loss's own few nodes
GRADIENT_CHECKS = 8  # steps checked for accumulating gradients in each epoch: a missing zero_grad shows in all
# nodes that pass a tensor through unchanged in value (views, copies, casts under autocast)
PASS_THROUGH = ("View", "Reshape", "Squeeze", "Unsqueeze", "Permute", "Transpose", "Select", "Slice", "Clone",
                "ToCopy", "Expand", "Contiguous", "Flatten", "Unbind", "Index", "T")
REGRESSION_LOSSES = ("MseLoss", "L1Loss", "SmoothL1Loss", "HuberLoss")


def node_name(node) -> str:
    """'MseLossBackward0' -> 'MseLoss'."""
    return type(node).__name__.split("Backward")[0] if node is not None else ""


def producer(node):
    """The node that made a loss's input, past the view, copy and cast nodes in between."""
    for _ in range(GRAPH_NODES):
        inputs = [n for n, _ in node.next_functions if n is not None] if node is not None else []
        if not inputs:
            return None
        node = inputs[0]
        if node_name(node) not in PASS_THROUGH:
            return node
    return None


CLASSIFICATION_LOSSES = ("NllLoss", "NllLoss2D", "BinaryCrossEntropy", "BinaryCrossEntropyWithLogits", "LogSoftmax")


def classification_loss(loss: torch.Tensor) -> bool:
    """The loss's graph (its few last nodes) holds a classification loss: cross-entropy, NLL, BCE."""
    return any(node_name(node) in CLASSIFICATION_LOSSES for node in loss_graph(loss))


def loss_mistake(loss: torch.Tensor, output_width: int | None, classes: int) -> dict | None:
    """What the loss's graph shows wrong (see the module's docstring), as {'evidence', 'fix'}, or None.
    `output_width`: the model's outputs per sample in training (None: not seen)."""
    for node in loss_graph(loss):
        name, made_by = node_name(node), node_name(producer(node))
        if name in REGRESSION_LOSSES and output_width == 1 and classes >= 3:
            return {"evidence": f"{name} on a model with one output per sample, for {classes} classes: the class "
                                "indices are fitted as numbers (class 9 is 'far' from class 0), and its first loss "
                                "is large because the indices are", "fix": "give the model one output per class and use "
                                "CrossEntropyLoss on the class indices"}
        if name == "BinaryCrossEntropyWithLogits" and made_by == "Sigmoid":
            return {"evidence": "BCEWithLogitsLoss is given the output of a sigmoid: it applies its own sigmoid, so "
                                "the model's probabilities are squashed twice (they stay within 0.5-0.73)",
                    "fix": "drop the sigmoid (BCEWithLogitsLoss takes logits), or use BCELoss on probabilities"}
        if name == "NllLoss" and made_by not in ("LogSoftmax", "Log", ""):
            return {"evidence": "NLLLoss is given raw scores: it expects log-probabilities, so it only pushes the "
                                "right class's score up without bound", "fix": "add log_softmax before NLLLoss, or use "
                                "CrossEntropyLoss on the raw scores"}
    return None


def loss_graph(loss: torch.Tensor):
    """The nodes of the loss's autograd graph, nearest first: at most GRAPH_NODES of them."""
    seen, queue = set(), [loss.grad_fn]
    while queue and len(seen) < GRAPH_NODES:
        node = queue.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        queue.extend(n for n, _ in node.next_functions if n is not None)


BOUNDED = {"SoftmaxBackward": "a softmax", "SigmoidBackward": "a sigmoid", "TanhBackward": "a tanh",
           "HardsigmoidBackward": "a hard sigmoid", "HardtanhBackward": "a hardtanh"}  # outputs in [0, 1] or [-1, 1]
SHAPE_ONLY = ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "PermuteBackward", "TransposeBackward",
              "SqueezeBackward", "UnsqueezeBackward", "CloneBackward", "ExpandBackward", "ToCopyBackward",
              "SliceBackward", "SelectBackward", "AsStridedBackward", "AliasBackward", "TBackward")


def bounded_before_log_softmax(loss: torch.Tensor) -> str | None:
    """What bounded activation feeds the loss's log_softmax (CrossEntropyLoss's), through ops that only
    move values (a view, a permute, a squeeze): 'a softmax' (of any axis), 'a sigmoid', 'a tanh', ...;
    None when the log_softmax takes logits. Walks at most GRAPH_NODES nodes back from the loss."""
    for node in loss_graph(loss):
        if not type(node).__name__.startswith("LogSoftmaxBackward"):
            continue
        source = next((n for n, _ in node.next_functions if n is not None), None)
        while source is not None and type(source).__name__.startswith(SHAPE_ONLY):
            source = next((n for n, _ in source.next_functions if n is not None), None)
        name = type(source).__name__ if source is not None else ""
        found = next((what for prefix, what in BOUNDED.items() if name.startswith(prefix)), None)
        if found:
            return found
    return None


def distributed_world() -> int:
    """The number of processes training together (1 without torch.distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class LoopWatch:
    """The loop checks of one model (see the module's docstring); a new epoch starts with `new_epoch()`."""

    def __init__(self, model: nn.Module, enabled: bool = True, optimizer: torch.optim.Optimizer | None = None,
                 classes: int = 2):
        self.enabled = enabled
        self.model, self.optimizer, self.classes = model, optimizer, classes
        self.mode_layers = [m for m in model.modules() if isinstance(m, MODE_LAYERS)]
        self.watched = None
        self.output_width = None   # the model's outputs per sample in training (for the wrong-loss check)
        self._handles = [model.register_forward_hook(self._after_forward)] if enabled else []
        # a backward through the model, whoever's loss it is (a GAN's generator step backpropagates through
        # the discriminator): heard at the first trainable parameter it reaches, a Python call per backward
        trainable = next((p for p in model.parameters() if p.requires_grad), None)
        if enabled and trainable is not None:
            self._handles.append(trainable.register_hook(self._backward_reached))
        self._fresh = None         # the gradients that reached the watched parameter since the last step
        self._fresh_handle = None
        self._paused = False
        self._marks = []           # per eval-mode forward with autograd on: [whether a backward reached it]
        self.load_state_dict({})

    def watch_parameter(self) -> tuple[str, torch.Tensor] | None:
        """The parameter whose gradient is checked for accumulation: the last one that trains and that the
        optimizer holds (the head's bias, usually: small, so checking it costs nothing). A parameter the
        optimizer does not hold is never cleared by optimizer.zero_grad(): its growing .grad is not a
        missing zero_grad (unchanged-weights names it). A weight matrix rather than a bias: a 2-class head's
        bias gradient always points along (1, -1), so earlier steps' gradients could not be told apart."""
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]} if self.optimizer else None
        trainable = [(n, p) for n, p in self.model.named_parameters()
                     if p.requires_grad and (held is None or id(p) in held)]
        matrices = [(n, p) for n, p in trainable if p.dim() >= 2 and p.numel() >= 4]
        return (matrices or trainable or [None])[-1]

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
        counts = dict(self.counts)
        counts["train_eval_mode"] += sum(m[0] for m in self._marks) if self.mode_layers else 0
        return {"counts": counts, "inputs": self.inputs, "softmax": self.softmax,
                "accumulated": list(self.accumulated), "unbacked": unbacked, "wrong_loss": self.wrong_loss,
                "classifier": self.classifier}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; an empty dict starts a new epoch."""
        self.counts = dict(state.get("counts") or {"evaluations": 0, "eval_train_mode": 0, "eval_autograd": 0,
                                                    "train_eval_mode": 0, "grad_forwards": 0})
        self.inputs = state.get("inputs")            # the epoch's first training batch: min, max, mean, std
        self.softmax = state.get("softmax", False)   # what bounded activation feeds the loss's log_softmax
        self.wrong_loss = state.get("wrong_loss")    # what the loss's graph shows wrong, if anything
        self.classifier = state.get("classifier", False)  # the loss's graph has a classification loss
        self.counts.setdefault("train_eval_mode", 0)
        self.counts.setdefault("grad_forwards", 0)
        self.watched = self.watch_parameter()
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
        """Dropout or batch norm in training mode (model.train() and model.eval() set them all alike: the
        first one answers for the rest, at no cost per step)."""
        return bool(self.mode_layers) and self.mode_layers[0].training

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
            self.counts["grad_forwards"] += 1
            if self.inputs is None:
                self._measure_inputs(args)
                if isinstance(output, torch.Tensor) and output.dim() >= 1:
                    self.output_width = output.shape[-1] if output.dim() >= 2 else 1
            self.since_backward[0] += 1
            self.since_backward[1] += self._in_training_mode()
        elif isinstance(output, torch.Tensor) and output.requires_grad:
            self.counts["grad_forwards"] += 1
            if self.inputs is None:
                self._measure_inputs(args)
            mark = [False]
            output.register_hook(lambda grad: mark.__setitem__(0, True))
            self._marks.append(mark)

    def _backward_reached(self, grad):
        """A gradient hook: a backward reached the model: the training forwards before it were trained on."""
        self.since_backward = [0, 0]

    def backward_done(self) -> None:
        """The monitor heard of a backward (after_backward): the training forwards before it were trained on."""
        self.since_backward = [0, 0]

    def _unbacked(self) -> tuple[int, int]:
        """(forwards with autograd on that got no backward, of which in training mode), so far this epoch:
        eval-mode ones whose output got no gradient, and the training-mode ones since the last backward."""
        carried, unbacked_eval_mode = tuple(self._carried), sum(not m[0] for m in self._marks)
        return carried[0] + unbacked_eval_mode + self.since_backward[0], carried[1] + self.since_backward[1]

    def check_loss(self, loss: torch.Tensor) -> None:
        """Once per epoch: is the loss fed probabilities, or the wrong thing? (a walk over a few graph
        nodes, no host copy)"""
        if not self.softmax_checked and loss.grad_fn is not None:
            self.softmax = self.softmax or bounded_before_log_softmax(loss) or False
            self.wrong_loss = self.wrong_loss or loss_mistake(loss, self.output_width, self.classes)
            self.classifier = self.classifier or classification_loss(loss)
            self.softmax_checked = True

    def gradient_check(self) -> list[torch.Tensor]:
        """Before the optimizer uses the gradient: [|grad - c x fresh|, |c x fresh|] of the watched parameter,
        where fresh is what reached it since the last step and c x fresh the multiple of it closest to grad
        (clipping or unscaling multiply; accumulation adds), as device tensors for the monitor's one host
        copy; [] when not checked now."""
        if self._fresh_handle is not None:
            self._fresh_handle.remove()
            self._fresh_handle = None
        fresh, self._fresh = self._fresh, None
        param = self.watched[1] if self.watched else None
        if fresh is None or param is None or param.grad is None or param.grad.shape != fresh.shape:
            return []
        if param.grad.is_sparse:
            return []
        grad = param.grad.detach().float()
        scale = (grad * fresh).sum() / (fresh * fresh).sum().clamp_min(1e-30)
        return [torch.linalg.vector_norm(grad - scale * fresh), torch.linalg.vector_norm(scale * fresh)]

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

        param = self.watched[1]

        def add(grad):
            if grad.is_sparse:
                return
            grad = grad.detach().float()
            # .grad cleared since (zero_grad, set_to_none or to zeros): what reached it before is gone from it
            # too (another loss's backward, e.g. a GAN's generator step through the discriminator)
            cleared = param.grad is None or not bool(param.grad.any())
            self._fresh = grad.clone() if self._fresh is None or cleared else self._fresh + grad

        self._fresh_handle = self.watched[1].register_hook(add)

    def figures(self) -> dict:
        """What the verdict reads of the loop, this epoch (see tools.monitor.verdict.EpochFigures.loop)."""
        unbacked, unbacked_train = self._unbacked()
        excess = sorted(self.accumulated)
        big = [x for x in excess if x > ACCUMULATION_EXCESS]
        eval_mode_trained = sum(m[0] for m in self._marks) if self.mode_layers else 0
        return {"evaluations": self.counts["evaluations"] + unbacked,
                "train_eval_mode": self.counts["train_eval_mode"] + eval_mode_trained,
                "grad_forwards": self.counts["grad_forwards"], "wrong_loss": self.wrong_loss,
                "output_width": self.output_width, "classifier": self.classifier,
                "eval_train_mode": self.counts["eval_train_mode"] + unbacked_train,
                "eval_autograd": unbacked,
                "train_mode_layers": ", ".join(sorted({type(m).__name__ for m in self.mode_layers})) or None,
                "softmax": self.softmax, "inputs": self.inputs,
                "accumulated": {"steps": len(big), "checked": len(excess),
                                "excess": big[len(big) // 2] if big else 0.0,
                                "where": self.watched[0] if self.watched else ""} if excess else None}

