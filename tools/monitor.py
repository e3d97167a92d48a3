"""See inside training: gradient norms, on-device histograms, update ratios, activations, and a verdict.

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
        monitor.after_step(step)                 # logging steps: update ratios, written with the norms
    verdict = monitor.end_epoch(step, loss_value)  # histograms, and a verdict on the epoch

Everything is computed on the tensors' own device and copied to the host once per step (the loss
and every gradient norm together), never with one `.item()` per parameter.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import nn
from torch.utils.tensorboard.summary import histogram_raw, text

HIST_BINS = 64
ONE_PASS_TENSOR = 1 << 16   # values: on a GPU, tensors up to this size are histogrammed together,
ONE_PASS_GROUP = 1 << 20    # in groups of up to this many values (bounds the memory a pass takes)

# Thresholds of the verdict. Each is explained, with its reasoning, in the README.
VANISHING_RATIO = 1e-3       # first layer's grad norm / last layer's below this: the gradient is lost on the way back
LOW_LOSS_FRACTION = 0.2      # loss below this fraction of chance level (ln classes) counts as low
EXPLODING_GROWTH = 100.0     # total grad norm 100x what it was at the first verdict: exploding
DIVERGED_LOSS_FACTOR = 10.0  # loss 10x the chance level: the weights were thrown far off (diverged)
DEAD_RELU_FRACTION = 0.5     # over half of a ReLU layer's units never active over an evaluation pass
UPDATE_RATIO_LOW = 1e-5      # |update| / |weight| per step; healthy is about 1e-3 (CS231n),
UPDATE_RATIO_HIGH = 1e-1     # these bounds sit 10x beyond the healthy band [1e-4, 1e-2]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of each tensor, as one 1-D tensor on their device: one fused call, no host copy."""
    if not tensors:
        return torch.zeros(0)
    return torch.stack(torch._foreach_norm(tensors)).float()


def grad_norms(model: nn.Module) -> dict[str, float]:
    """name -> L2 norm of the gradient, for every parameter that has one; one host copy for all."""
    named = [(n, p.grad) for n, p in unwrap(model).named_parameters() if p.grad is not None]
    values = tensor_norms([g for _, g in named]).tolist()  # one sync for all parameters
    return {name: value for (name, _), value in zip(named, values)}


def grad_flow(model: nn.Module) -> dict[str, tuple[float, float]]:
    """name -> (mean |grad|, max |grad|) of every weight (dim > 1) with a gradient, in registration
    order: the numbers of a gradient-flow chart. One host copy for all."""
    named = [(n, p.grad) for n, p in unwrap(model).named_parameters() if p.grad is not None and p.dim() > 1]
    if not named:
        return {}
    grads = [g for _, g in named]
    sums = torch.stack(torch._foreach_norm(grads, ord=1))
    maxs = torch.stack(torch._foreach_norm(grads, ord=float("inf")))
    table = torch.stack([sums, maxs]).T.tolist()  # one sync for all parameters
    return {name: (total / grad.numel(), peak) for (name, grad), (total, peak) in zip(named, table)}


@dataclass
class Histogram:
    """A histogram of a tensor's finite values, in the fields of TensorBoard's add_histogram_raw."""
    min: float
    max: float
    num: int                 # finite values counted
    sum: float
    sum_squares: float
    bucket_limits: list      # right edge of each bin
    bucket_counts: list
    nan: int = 0
    inf: int = 0

    @property
    def edges(self) -> list:
        return [self.min] + self.bucket_limits


def histograms(tensors: list[torch.Tensor], bins: int = HIST_BINS, one_pass: bool | None = None) -> list[Histogram]:
    """Histograms of `bins` equal bins over [min, max] of each tensor's finite values, computed on device.

    NaN and Inf are counted, not binned; an empty tensor, or one with no finite value, gets an empty
    histogram. On a CPU, one torch.histc per tensor and two host copies in all. On a GPU, small tensors
    (biases, norm layers, all of LeNet) go in groups, each group in one pass with one host copy, and big
    ones one by one (two host copies for all of them), where a kernel's launch is small beside its work.
    `one_pass`: whether to group small tensors; by default, when all tensors are on one GPU.
    """
    if not tensors:
        return []
    flat = [t.detach().reshape(-1).float() for t in tensors]
    if one_pass is None:
        one_pass = flat[0].is_cuda and all(t.device == flat[0].device for t in flat)
    if not one_pass:
        return histograms_one_by_one(flat, bins)
    result = [None] * len(flat)
    big = [i for i, t in enumerate(flat) if t.numel() > ONE_PASS_TENSOR]
    for i, hist in zip(big, histograms_one_by_one([flat[i] for i in big], bins)):
        result[i] = hist
    groups, size = [[]], 0  # the small tensors, in groups of at most ONE_PASS_GROUP values
    for i in (i for i, t in enumerate(flat) if t.numel() <= ONE_PASS_TENSOR):
        if groups[-1] and size + flat[i].numel() > ONE_PASS_GROUP:
            groups, size = groups + [[]], 0
        groups[-1].append(i)
        size += flat[i].numel()
    for group in filter(None, groups):
        for i, hist in zip(group, histograms_in_one_pass([flat[i] for i in group], bins)):
            result[i] = hist
    return result


def histograms_one_by_one(flat: list[torch.Tensor], bins: int = HIST_BINS) -> list[Histogram]:
    """`histograms` of 1-D float tensors with one torch.histc per tensor (the fastest way on a CPU)."""
    if not flat:
        return []
    ranges = torch.stack([torch.stack(torch.aminmax(t)) if t.numel() else t.new_zeros(2) for t in flat])
    ranges = ranges.tolist()  # host copy 1: every range at once
    finite, counts, sums, squares, nonfinite = [], [], [], [], {}
    for index, (t, (lo, hi)) in enumerate(zip(flat, ranges)):
        if not (math.isfinite(lo) and math.isfinite(hi)):  # rare: drop NaN and Inf, count them
            nan, inf = torch.isnan(t).sum().item(), torch.isinf(t).sum().item()
            t = t[torch.isfinite(t)]
            lo, hi = torch.stack(torch.aminmax(t)).tolist() if t.numel() else (0.0, 0.0)
            nonfinite[index] = (nan, inf)
        if hi == lo:  # a constant tensor (e.g. zero biases): give its one value a narrow range
            lo, hi = lo - 0.5, hi + 0.5
        ranges[index] = (lo, hi)
        finite.append(t)
        counts.append(torch.histc(t, bins=bins, min=lo, max=hi) if t.numel() else t.new_zeros(bins))
        sums.append(t.sum())
        squares.append(torch.dot(t, t))  # the sum of squares, without a t * t temporary
    table = torch.cat([torch.stack(counts).flatten(), torch.stack(sums), torch.stack(squares)]).double().cpu()
    table = table.tolist()  # host copy 2: all counts and sums at once
    limits = bucket_limits(ranges, bins)
    n = len(flat)
    result = []
    for index, ((lo, hi), t) in enumerate(zip(ranges, finite)):
        nan, inf = nonfinite.get(index, (0, 0))
        result.append(Histogram(min=lo, max=hi, num=t.numel(), sum=table[n * bins + index],
                                sum_squares=table[n * bins + n + index], bucket_limits=limits[index],
                                bucket_counts=table[index * bins:(index + 1) * bins], nan=nan, inf=inf))
    return result


def histograms_in_one_pass(tensors: list[torch.Tensor], bins: int = HIST_BINS) -> list[Histogram]:
    """The same histograms as `histograms`, the way a GPU likes them: every value in one buffer, each
    tagged with the index of its tensor, so that a dozen kernels and one host copy do all tensors
    (per tensor, the launches would outnumber the work). The ops run on a CPU too, only slower than
    one torch.histc per tensor. Bins are computed in float32: a value within rounding of a bin edge
    may land in the bin beside it."""
    device, n = tensors[0].device, len(tensors)
    values = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    owner = tensor_owners(tuple(t.numel() for t in tensors), device)  # value -> index of its tensor
    finite = torch.isfinite(values)
    lo = values.new_full((n,), math.inf).scatter_reduce(0, owner, values.masked_fill(~finite, math.inf), "amin")
    hi = values.new_full((n,), -math.inf).scatter_reduce(0, owner, values.masked_fill(~finite, -math.inf), "amax")
    empty = lo > hi  # no finite value
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    constant = lo == hi  # a constant tensor (e.g. zero biases): give its one value a narrow range
    lo, hi = torch.where(constant, lo - 0.5, lo), torch.where(constant, hi + 0.5, hi)
    kept = torch.where(finite, values, 0.0).double()
    per_tensor = torch.zeros(4, n, dtype=torch.float64, device=device)
    per_tensor[0].index_add_(0, owner, kept)
    per_tensor[1].index_add_(0, owner, kept * kept)
    per_tensor[2].index_add_(0, owner, torch.isnan(values).double())
    per_tensor[3].index_add_(0, owner, torch.isinf(values).double())
    scale = bins / (hi - lo)
    index = ((values - lo[owner]) * scale[owner]).nan_to_num(0.0).long().clamp_(0, bins - 1)
    counts = torch.zeros(n * bins, dtype=torch.float64, device=device)
    counts.index_add_(0, owner * bins + index, finite.double())  # NaN and Inf add nothing
    table = torch.cat([lo.double(), hi.double(), per_tensor.flatten(), counts]).tolist()  # the one host copy
    lows, highs = table[:n], table[n:2 * n]
    sums, squares, nans, infs = (table[2 * n + k * n:3 * n + k * n] for k in range(4))
    counts = table[6 * n:]
    limits = bucket_limits(list(zip(lows, highs)), bins)
    result = []
    for i, t in enumerate(tensors):
        result.append(Histogram(min=lows[i], max=highs[i], num=t.numel() - int(nans[i]) - int(infs[i]),
                                sum=sums[i], sum_squares=squares[i], bucket_limits=limits[i],
                                bucket_counts=counts[i * bins:(i + 1) * bins], nan=int(nans[i]), inf=int(infs[i])))
    return result


def bucket_limits(ranges: list[tuple[float, float]], bins: int) -> list[list[float]]:
    """The right bin edges lo + width * k, k = 1..bins, of each (lo, hi) range, all at once (float64,
    the same numbers Python's own arithmetic gives)."""
    lows, highs = torch.tensor(ranges, dtype=torch.float64).reshape(-1, 2).T
    return (lows[:, None] + ((highs - lows) / bins)[:, None] * torch.arange(1, bins + 1)).tolist()


@lru_cache(maxsize=16)
def tensor_owners(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """For tensors of these sizes laid end to end: the index of the tensor each value belongs to
    (int64, at most ONE_PASS_GROUP values). Kept, because the same parameters come back every epoch
    and building it copies the sizes to the device, which waits for the GPU."""
    counts = torch.tensor(sizes, device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), counts, output_size=sum(sizes))


def write_event(writer, step: int, scalars: dict | None = None, histograms: dict | None = None,
                texts: dict | None = None) -> None:
    """Scalars (tag -> float), histograms (tag -> Histogram) and texts (tag -> str) in one TensorBoard
    event, each value as add_scalar, add_histogram_raw and add_text write it (the last two built by the
    same functions): one protobuf, one checksum and one write instead of one per tag."""
    values = [Summary.Value(tag=tag, simple_value=float(v)) for tag, v in (scalars or {}).items()]
    values += [histogram_raw(tag, min=h.min, max=h.max, num=h.num, sum=h.sum, sum_squares=h.sum_squares,
                             bucket_limits=h.bucket_limits, bucket_counts=h.bucket_counts).value[0]
               for tag, h in (histograms or {}).items() if h.num]
    values += [text(tag, body).value[0] for tag, body in (texts or {}).items()]
    if values:
        writer.file_writer.add_summary(Summary(value=values), step)


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


@contextmanager
def hooks(handles: list):
    """Remove every hook handle on exit, whatever happens inside."""
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


class ActivationStats:
    """Per-layer activation statistics gathered by forward hooks over one or more batches.

    For every hooked module: mean and std of its output (unless moments=False); for ReLU outputs also
    the fraction of units never active over all the batches seen: dead units. A unit is a feature of
    a linear layer's output, or a channel of a conv layer's (dead when zero everywhere, for every input).
    """

    def __init__(self, moments: bool = True):
        self.moments = moments
        self._sums = {}     # name -> tensor [sum, sum of squares], on device
        self._counts = {}   # name -> number of values
        self._active = {}   # name -> bool tensor over units: ever > 0, on device

    def hook(self, name: str, module: nn.Module):
        is_relu = isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU))

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
        return record

    def result(self) -> dict[str, dict[str, float]]:
        """name -> {'mean', 'std'} and for ReLUs {'dead'}, in forward order; one host copy for all."""
        names = list(dict.fromkeys([*self._sums, *self._active]))
        if not names:
            return {}
        parts = [self._sums[n] for n in names if n in self._sums]
        parts += [a.float().mean().reshape(1) for n, a in self._active.items()]
        values = iter(torch.cat(parts).tolist())  # one sync for all layers
        stats = {n: {} for n in names}
        for name in (n for n in names if n in self._sums):
            total, squares, count = next(values), next(values), self._counts[name]
            mean = total / count
            stats[name] = {"mean": mean, "std": math.sqrt(max(squares / count - mean * mean, 0.0))}
        for name in self._active:
            stats[name]["dead"] = 1.0 - next(values)
        return stats


@contextmanager
def activation_stats(model: nn.Module, enabled: bool = True, types: tuple = (nn.Module,), moments: bool = True):
    """Forward hooks on every leaf module for the duration of the block; yields an ActivationStats.

        with activation_stats(model) as acts:
            model(x)
        acts.result()  # {'conv1': {'mean': ..., 'std': ...}, 'relu1': {..., 'dead': 0.1}, ...}

    `types`: only leaf modules of these types; with types=(nn.ReLU,) and moments=False only dead units
    are counted, which is cheap. With enabled=False no hook is attached and the result is empty.
    """
    stats = ActivationStats(moments)
    leaves = [(n, m) for n, m in unwrap(model).named_modules()
              if enabled and n and not list(m.children()) and isinstance(m, types)]
    with hooks([m.register_forward_hook(stats.hook(n, m)) for n, m in leaves]):
        yield stats


@dataclass
class Verdict:
    """The diagnosis of one epoch: a status word and the findings that led to it."""
    status: str                      # healthy, converged, vanishing, exploding, dead-relu, lr-too-low, lr-too-high
    findings: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.status}: " + "; ".join(self.findings)


def diagnose(norms: dict[str, float], loss: float, classes: int, first_total_norm: float | None = None,
             update_ratios: dict[str, float] | None = None, activations: dict | None = None,
             nonfinite: str | None = None) -> Verdict:
    """A verdict on training health from one epoch's figures.

    norms: parameter name -> gradient L2 norm, in forward order (weights of the first and last layer
    are compared); loss: the epoch's mean train loss; classes: for the chance-level loss ln(classes);
    first_total_norm: the total gradient norm at the first verdict (growth = exploding); update_ratios:
    name -> |update| / |weight| per step; activations: `ActivationStats.result()`; nonfinite: what was
    found non-finite, if anything. Severity order: exploding, vanishing, dead-relu, lr, converged, healthy.
    """
    found = []  # (status, finding)
    weights = [n for n in norms if n.endswith("weight")] or list(norms)
    total = math.sqrt(sum(v * v for v in norms.values())) if norms else 0.0
    chance = math.log(max(classes, 2))
    loss_low = math.isfinite(loss) and loss < LOW_LOSS_FRACTION * chance
    if nonfinite or not math.isfinite(loss) or not math.isfinite(total):
        found.append(("exploding", f"non-finite values: {nonfinite or 'loss or gradient'}"))
    elif loss > DIVERGED_LOSS_FACTOR * chance:
        found.append(("exploding", f"loss {loss:.3g} is {loss / chance:.0f}x the chance level ln({classes}) = "
                                   f"{chance:.2f}: training diverged"))
    elif first_total_norm and total > EXPLODING_GROWTH * first_total_norm:
        found.append(("exploding", f"total gradient norm grew {total / first_total_norm:.0f}x since the "
                                   f"first verdict ({first_total_norm:.3g} -> {total:.3g})"))
    if len(weights) >= 2 and math.isfinite(total) and not loss_low:
        first, last = norms[weights[0]], norms[weights[-1]]
        if last > 0 and first / last < VANISHING_RATIO:
            found.append(("vanishing", f"{weights[0]} gradient {first:.2e} is {last / max(first, 1e-45):.0e}x "
                                       f"smaller than {weights[-1]}'s {last:.2e} while the loss "
                                       f"{loss:.3f} is not low"))
    dead = {name: stats["dead"] for name, stats in (activations or {}).items()
            if stats.get("dead", 0.0) > DEAD_RELU_FRACTION}
    if dead:
        worst = max(dead, key=dead.get)
        found.append(("dead-relu", f"dead ReLUs: over {DEAD_RELU_FRACTION:.0%} of the units never fire in "
                                   f"{len(dead)} layer(s), worst {worst} ({dead[worst]:.0%})"))
    update_ratios = update_ratios or {}
    ratios = [v for n, v in update_ratios.items() if n.endswith("weight")] or list(update_ratios.values())
    if ratios:
        median = sorted(ratios)[len(ratios) // 2]
        if median < UPDATE_RATIO_LOW:
            found.append(("lr-too-low", f"median update/weight ratio {median:.1e} < {UPDATE_RATIO_LOW:.0e}: "
                                        "learning rate too low"))
        elif median > UPDATE_RATIO_HIGH:
            found.append(("lr-too-high", f"median update/weight ratio {median:.1e} > {UPDATE_RATIO_HIGH:.0e}: "
                                         "learning rate too high"))
    if found:
        return Verdict(found[0][0], [f for _, f in found])
    if loss_low:
        return Verdict("converged", [f"loss {loss:.3f} is low and gradients small as expected "
                                     f"(total norm {total:.2e})"])
    return Verdict("healthy", [f"loss {loss:.3f}, total gradient norm {total:.2e}"
                               + (f", median update ratio {sorted(ratios)[len(ratios) // 2]:.1e}" if ratios else "")])


class TrainingMonitor:
    """Gradient norms, update ratios and histograms of a model's parameters, logged to TensorBoard.

    Call `after_backward(step, loss)` after every backward, `after_step(step)` after every optimizer
    step and `end_epoch(epoch, ...)` once per epoch. Norms are logged every `log_interval` steps;
    histograms once per epoch. With `enabled=False` only the non-finite loss check remains.
    """

    def __init__(self, model: nn.Module, writer=None, log_interval: int = 10, enabled: bool = True,
                 bins: int = HIST_BINS, classes: int = 2):
        self.model = unwrap(model)
        self.writer = writer
        self.log_interval = log_interval
        self.enabled = enabled
        self.bins = bins
        self.classes = classes
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.nonfinite = None        # (step, what) of the first non-finite loss or gradient
        self.first_total_norm = None
        self._norm_sum, self._norm_steps = None, 0    # per-parameter grad norms summed over the epoch's steps
        self._ratio_sum, self._ratio_steps = None, 0  # update ratios summed over the epoch's logged steps
        self._before = None          # weights before a logged optimizer step
        self._pending = None         # (step, scalars) of a logging step, written by after_step
        self.order = None            # parameter names in forward order, found when first needed

    def set_forward_order(self, *example_inputs) -> None:
        """Record the forward order of parameters (names the first non-finite one correctly)."""
        self.order = forward_order(self.model, *example_inputs)

    def after_backward(self, step: int, loss: torch.Tensor) -> float:
        """Check the loss and gradients for NaN/Inf and log gradient norms; returns the loss as a float.

        One host copy per step: the loss, and when monitoring, every parameter's gradient norm with it.
        """
        grads = [p.grad for p in self.params if p.grad is not None] if self.enabled else []
        if not grads:
            value = loss.item()
            if not math.isfinite(value):
                self._record_nonfinite(step, "loss")
            return value
        # one fused call for all parameters' norms, one sync per step for them and the loss
        value, *norms = torch.stack([loss.detach().float(), *torch._foreach_norm(grads)]).tolist()
        total = math.sqrt(sum(n * n for n in norms))
        if not math.isfinite(value) or not math.isfinite(total):
            self._record_nonfinite(step, "loss" if not math.isfinite(value) else "gradient", norms)
        if len(norms) == len(self.params):  # the verdict uses the epoch's mean norms
            self._norm_sum = norms if self._norm_sum is None else [a + b for a, b in zip(self._norm_sum, norms)]
            self._norm_steps += 1
        if step % self.log_interval == 0:
            self._write_pending()
            # written by after_step together with the update ratios: one event per logging step
            self._pending = (step, {f"grad_norm/{name}": norm for name, norm in zip(self._grad_names(), norms)}
                             | {"grad_norm/total": total})
            self._before = [p.detach().clone() for p in self.params]
            if self.nonfinite is not None:  # the loop will stop before after_step: write them now
                self._write_pending()
        return value

    def after_step(self, step: int) -> None:
        """After optimizer.step(): the update-to-weight ratio |W_new - W_old| / |W_old| of a logged step,
        written to TensorBoard with the step's gradient norms."""
        if self._before is None:
            return
        deltas = torch._foreach_sub([p.detach() for p in self.params], self._before)
        norms = tensor_norms([*self._before, *deltas]).tolist()  # one fused call, one sync: |W_old|, then |update|
        n = len(self.params)
        ratios = [update / max(weight, 1e-12) for weight, update in zip(norms[:n], norms[n:])]
        self._ratio_sum = ratios if self._ratio_sum is None else [a + b for a, b in zip(self._ratio_sum, ratios)]
        self._ratio_steps += 1
        self._before = None
        logged_step, scalars = self._pending or (step, {})
        self._pending = None
        if self.writer is not None:
            write_event(self.writer, logged_step,
                        scalars=scalars | {f"update_ratio/{n}": r for n, r in zip(self.names, ratios)})

    def _write_pending(self) -> None:
        """The gradient norms of a logging step that no after_step followed, written on their own."""
        if self._pending is not None and self.writer is not None:
            write_event(self.writer, self._pending[0], scalars=self._pending[1])
        self._pending = None

    def _grad_names(self) -> list[str]:
        return [n for n, p in zip(self.names, self.params) if p.grad is not None]

    def _record_nonfinite(self, step: int, what: str, norms: list | None = None) -> None:
        """Remember the first non-finite loss or gradient: the step, and the first parameter in forward
        order whose gradient norm is NaN or Inf (NaN/Inf values, or values so large the norm overflows)."""
        if self.nonfinite is not None:
            return
        names = self._grad_names()
        if norms is None:  # monitoring off: look at the gradients now, once
            norms = [torch.linalg.vector_norm(p.grad).item() for p in self.params if p.grad is not None]
        bad = {n for n, v in zip(names, norms) if not math.isfinite(v)}
        first = next((n for n in (self.order or self.names) if n in bad), None)
        detail = f"non-finite {what} at step {step}" + (f"; first parameter with a non-finite gradient: {first}"
                                                        if first else "")
        self.nonfinite = (step, detail)

    def parameter_histograms(self) -> dict[str, Histogram]:
        """Weights and gradients of every parameter: tag (weights/<name>, grads/<name>) -> Histogram,
        which also counts NaN and Inf values."""
        if not self.enabled:
            return {}
        tags = [f"weights/{n}" for n in self.names]
        tensors = [p.detach() for p in self.params]
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

    def end_epoch(self, epoch: int, train_loss: float, activations: dict | None = None) -> Verdict | None:
        """Histograms of the epoch, and the verdict on it (printed by the caller, logged as text here).

        The histograms, the verdict (`diagnosis`) and the dead-unit shares (`dead_relu/<layer>`) go to
        TensorBoard in one event."""
        if not self.enabled:
            return None
        self._write_pending()
        hists = self.parameter_histograms()
        bad = [t for t, h in hists.items() if h.nan or h.inf]
        norms = {n: v / self._norm_steps for n, v in zip(self.names, self._norm_sum or [])}
        ratios = {n: v / self._ratio_steps for n, v in zip(self.names, self._ratio_sum or [])}
        order = self.order or self.names
        norms = {n: norms[n] for n in order if n in norms}
        total = math.sqrt(sum(v * v for v in norms.values())) if norms else None
        if self.first_total_norm is None and total and math.isfinite(total):
            self.first_total_norm = total
        nonfinite = self.nonfinite[1] if self.nonfinite else (f"NaN/Inf in {', '.join(bad)}" if bad else None)
        verdict = diagnose(norms, train_loss, self.classes, self.first_total_norm, ratios, activations, nonfinite)
        if self.writer is not None:
            dead = {f"dead_relu/{name}": stats["dead"] for name, stats in (activations or {}).items()
                    if "dead" in stats}
            write_event(self.writer, epoch, scalars=dead, histograms=hists,
                        texts={"diagnosis": f"epoch {epoch}: {verdict}"})
        self._norm_sum, self._norm_steps, self._ratio_sum, self._ratio_steps = None, 0, None, 0
        return verdict
