"""Running on N processes with torchrun: process group, devices, sharded data, agreeing across ranks.

A plain `python train_rmb.py` is one process and every function here is then a no-op. Under
`torchrun --nproc_per_node=N train_rmb.py` (or several nodes), torchrun sets RANK, WORLD_SIZE and
LOCAL_RANK; we join the process group (nccl on GPUs, gloo on CPUs) and take the device from LOCAL_RANK.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from tools.errors import UserError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes TensorBoard, checkpoints, pictures and metrics, and prints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


@contextmanager
def distributed(device_flag: str):
    """Yields (Distributed, torch.device); joins torchrun's process group and leaves it on exit.

    Single process: Distributed() and the device of --device. Under torchrun: the device is
    cuda:LOCAL_RANK when CUDA is used (nccl), else the CPU (gloo).
    """
    from tools.cli import select_device

    if not launched_by_torchrun():
        yield Distributed(), select_device(device_flag)
        return
    info = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = select_device(device_flag)
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA device(s) "
                            "here: lower --nproc_per_node")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield info, device
    finally:
        dist.destroy_process_group()


class ShardSampler(Sampler):
    """Every rank-th index starting at `rank`: each sample on exactly one rank, none repeated (unlike
    DistributedSampler, which pads the shards to equal length). For evaluation."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (nothing to do in a single process); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(obj, info: Distributed):
    """Rank 0's `obj` on every rank (pickled; for small things like a checkpoint of LeNet or a path)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, info: Distributed) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not info.enabled:
        return [obj]
    boxes = [None] * info.world_size
    dist.all_gather_object(boxes, obj)
    return boxes


def barrier(info: Distributed) -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if info.enabled:
        dist.barrier()


@contextmanager
def main_process_first(info: Distributed):
    """Rank 0 runs the block first (e.g. generating a data set), the other ranks after it."""
    if info.enabled and not info.is_main:
        dist.barrier()
    try:
        yield
    finally:
        if info.enabled and info.is_main:
            dist.barrier()


def weights_agree(model: torch.nn.Module, info: Distributed) -> bool:
    """True when every rank holds bit-identical weights (a check that DDP kept them in step)."""
    if not info.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
    return all(torch.equal(flat, other) for other in gather(flat, info))
