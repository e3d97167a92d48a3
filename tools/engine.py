"""One epoch of training and one pass of evaluation, shared by the scripts."""
import itertools

import torch
from torch import nn

from tools.checkpoint import restore_rng_states
from tools.distributed import all_reduce_sum
from tools.monitor import TrainingMonitor, write_event


def train_one_epoch(model: nn.Module, loader, criterion, optimizer, device: torch.device,
                    monitor: TrainingMonitor, writer=None, global_step: int = 0, skip_batches: int = 0,
                    resume_rng: dict | None = None, resume_sums: dict | None = None, should_stop=lambda: False,
                    progress=None, reduce=None) -> dict:
    """Train over `loader` once; returns the epoch's figures.

    `global_step` counts optimizer steps done; step k's `loss/train` and running `acc/train` (accuracy
    over the epoch so far) are logged at k = 1, 2, ...
    `skip_batches`: batches already trained in this epoch before an interruption; they are drawn again
    (same order, same augmentation) but not trained on, then `resume_rng` (the random states saved at
    the interruption) is restored and `resume_sums` (the epoch's running loss sum, correct and seen
    counts) carried on, so the epoch goes on exactly as it would have. `should_stop()` is asked at
    every step; when it says yes the epoch ends after that step. `progress`: a tqdm-like bar or None.
    `reduce`: under torchrun, a function that sums a list of numbers over all ranks; once per step it
    turns the local loss and accuracy into the global batch's, and makes every rank stop together when
    any rank saw NaN/Inf or was asked to stop.
    Returns {'loss', 'acc', 'global_step', 'batches' (done in this epoch), 'complete', 'diverged',
    'losses': [(global step, loss)], 'sums': the running sums, for a checkpoint mid-epoch}.
    """
    model.train()
    sums = resume_sums or {"loss_sum": 0.0, "correct": 0, "seen": 0}
    loss_sum, correct, seen, batches = sums["loss_sum"], sums["correct"], sums["seen"], skip_batches
    losses = []
    stopped = False
    batches_iter = iter(loader)
    for _ in itertools.islice(batches_iter, skip_batches):
        pass
    if resume_rng is not None:
        restore_rng_states(resume_rng, loader.generator)
    for images, labels in batches_iter:
        step = global_step + 1
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = criterion(logits, labels)
        loss.backward()
        loss_value = monitor.after_backward(step, loss)
        n, batch_correct = labels.size(0), (logits.argmax(1) == labels).sum().item()
        bad, stop = monitor.nonfinite is not None, should_stop()
        if reduce is not None:  # one all-reduce per step, over every rank
            batch_loss, batch_correct, n, bad, stop = reduce([loss_value * n, batch_correct, n, bad, stop])
            loss_value = batch_loss / n
            if bad and monitor.nonfinite is None:
                monitor.nonfinite = (step, f"non-finite loss or gradient on another rank at step {step}")
        if bad:  # never step with NaN gradients: the weights stay good
            return {"loss": float("nan"), "acc": correct / max(seen, 1), "global_step": global_step,
                    "batches": batches, "complete": False, "diverged": True, "losses": losses, "sums": None}
        optimizer.step()
        monitor.after_step(step)
        global_step = step

        correct += int(batch_correct)
        loss_sum += loss_value * n
        seen += int(n)
        losses.append((step, loss_value))
        if writer is not None:  # both in one event: half the work for TensorBoard's writer thread
            write_event(writer, step, scalars={"loss/train": loss_value, "acc/train": correct / seen})
        if progress is not None:
            progress.set_postfix(loss=f"{loss_value:.4f}", acc=f"{correct / seen:.2%}", refresh=False)
            progress.update(1)
        batches += 1
        if stop:
            stopped = True
            break
    return {"loss": loss_sum / max(seen, 1), "acc": correct / max(seen, 1), "global_step": global_step,
            "batches": batches, "complete": not stopped, "diverged": False, "losses": losses,
            "sums": {"loss_sum": loss_sum, "correct": correct, "seen": seen}}


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion, device: torch.device, classes: int) -> dict:
    """Mean loss and accuracy over every sample of `loader`, and the confusion matrix.

    criterion must average over the batch (as CrossEntropyLoss does); returns {'loss', 'acc', 'total',
    'confusion': (classes, classes) int64 CPU tensor, rows true class, columns predicted}.
    Counts stay on the device until the end: one host copy per pass.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(classes * classes, device=device, dtype=torch.int64)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += criterion(logits, labels).double() * labels.size(0)
        confusion += torch.bincount(labels * classes + logits.argmax(1), minlength=classes * classes)
    all_reduce_sum(loss_sum)  # under torchrun each rank saw its own shard: add them up (else nothing)
    all_reduce_sum(confusion)
    confusion = confusion.view(classes, classes).cpu()
    total = int(confusion.sum())
    return {"loss": loss_sum.item() / max(total, 1), "acc": confusion.trace().item() / max(total, 1),
            "total": total, "confusion": confusion}
