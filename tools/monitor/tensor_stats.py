"""Tensor statistics on the tensors' own device: gradient norms, gradient flow, histograms.

Each function makes at most a couple of device-to-host copies for all its tensors together, never one
`.item()` per parameter: on a GPU every copy makes the host wait for the device.
"""
import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

HIST_BINS = 64
ONE_PASS_TENSOR = 1 << 16   # values: on a GPU, tensors up to this size are histogrammed together,
ONE_PASS_GROUP = 1 << 20    # in groups of up to this many values (bounds the memory a pass takes)


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


def identical_units(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    """The weights (of 2 or more dimensions, 2 or more units along dim 0: a layer's units) whose every unit
    holds the same values as the first: zero or constant init, the units compute one thing and get one
    gradient, so they never come apart. One device-to-host copy for all of them."""
    weights = [(n, p.detach()) for n, p in named if p.dim() >= 2 and p.shape[0] > 1 and p.numel()]
    if not weights:
        return []
    same = torch.stack([(w == w[:1]).all() for _, w in weights]).tolist()  # one sync for all parameters
    return [n for (n, _), s in zip(weights, same) if s]


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
