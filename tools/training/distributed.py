"""Running on N processes with torchrun: process group, devices, sharded data, agreeing across ranks.

A plain `python train_rmb.py` is one process and every function here then does what one process
needs (the model itself, sums of one). Under `torchrun --nproc_per_node=N train_rmb.py` (or several
nodes), torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; we join the process group (nccl on GPUs, gloo on
CPUs), take the device from LOCAL_RANK, and the same calls wrap the model in DistributedDataParallel
and sum over the ranks (tools.training.batches shards the data by the same process group). So the training script reads the same
on one process or many.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tools.cli.errors import UserError


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


def enabled() -> bool:
    """True inside a process group of more than one process (under torchrun with N > 1)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def distributed(device_flag: str):
    """Yields (Distributed, torch.device); joins torchrun's process group and leaves it on exit.

    Single process: Distributed() and the device of --device. Under torchrun: the device is
    cuda:LOCAL_RANK when CUDA is used (nccl), else the CPU (gloo).
    """
    from tools.cli.arguments import select_device

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
        # Leave together: a rank that tore down its process group while another was still drawing the
        # end-of-run pictures was, now and then, aborted by gloo ("terminate called without an active
        # exception", exit -6) and torchrun reported the whole run failed.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model to train: itself, or under torchrun in DistributedDataParallel (which averages the
    gradients over the ranks in backward). Checkpoints and pictures use the unwrapped model."""
    if not enabled():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (nothing to do in a single process); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each number summed over all ranks, in one all-reduce (float64); a single process gets them back
    as they are, without touching a tensor."""
    if not enabled():
        return values
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def broadcast(obj):
    """Rank 0's `obj` on every rank (pickled; for small things like a checkpoint of LeNet or a path)."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not enabled():
        return [obj]
    boxes = [None] * dist.get_world_size()
    dist.all_gather_object(boxes, obj)
    return boxes


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if enabled():
        dist.barrier()


def is_main_process() -> bool:
    """True on rank 0, and in a single process."""
    return not enabled() or dist.get_rank() == 0


@contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. generating a data set), the other ranks after it."""
    is_main = is_main_process()
    if not is_main:
        dist.barrier()
    try:
        yield
    finally:
        if enabled() and is_main:
            dist.barrier()


def weights_agree(model: torch.nn.Module) -> bool:
    """True when every rank holds bit-identical weights (a check that DDP kept them in step)."""
    if not enabled():
        return True
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
    return all(torch.equal(flat, other) for other in gather(flat))


def check_weights_agree(model: torch.nn.Module) -> str | None:
    """Under torchrun: 'weights identical on all N processes', or RuntimeError when DDP lost step (a
    bug, never a user's mistake). None in a single process."""
    if not enabled():
        return None
    if not weights_agree(model):
        raise RuntimeError("the ranks ended with different weights: DistributedDataParallel lost step")
    return f"weights identical on all {dist.get_world_size()} processes"
