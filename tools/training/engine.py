"""One epoch of training and one pass of evaluation, shared by the scripts (the shape of torchvision's
references: `train_one_epoch` and `evaluate`)."""
import itertools

import torch
from torch import nn
from tqdm import tqdm

from tools.monitor import TrainingMonitor
from tools.tb.writer import ACCURACY, LOSS
from tools.training.checkpoint import restore_rng_states, rng_states
from tools.training.distributed import all_reduce_sum, enabled, is_main_process, sum_over_ranks
from tools.training.train_state import TrainState


def train_one_epoch(model: nn.Module, loader, criterion, optimizer, device: torch.device, state: TrainState,
                    monitor: TrainingMonitor, stop) -> dict:
    """Train over `loader` once, from where `state` stands; returns {'loss', 'acc', 'complete', 'diverged'}.

    `state` advances at every step (global step, the epoch's running sums, the train-loss history), so
    a checkpoint taken when the epoch ends early holds exactly where it stopped. An interrupted epoch
    (state.batches_in_epoch > 0, after a resume) draws its first batches again, in the same order and
    with the same augmentation, without training on them; then the random states of the interruption
    are restored and the epoch goes on exactly as it would have. Step k's `loss/train` and running
    `acc/train` (accuracy over the epoch so far) go to TensorBoard through the monitor at k = 1, 2, ...
    `stop.requested` is asked at every step; when it says yes the epoch ends after that step
    ('complete': False). Under torchrun one all-reduce per step turns the local loss and accuracy into
    the global batch's, and makes every rank stop together when any rank saw NaN/Inf or was asked to stop.
    """
    model.train()
    shuffler = loader if hasattr(loader, "set_epoch") else getattr(loader, "sampler", None)  # DeviceBatches, DataLoader
    if hasattr(shuffler, "set_epoch"):
        shuffler.set_epoch(state.epoch)  # a new shuffle every epoch, the same on every rank
    resuming = state.mid_epoch
    if not resuming:
        state.epoch_rng = rng_states(loader.generator)  # where the epoch begins, for a resume mid-epoch
    batches = iter(loader)
    for _ in itertools.islice(batches, state.batches_in_epoch):  # resuming: the batches already trained
        pass
    if resuming and state.resume_rng is not None:
        restore_rng_states(state.resume_rng, loader.generator)
    stopping = False
    with tqdm(total=len(loader), initial=state.batches_in_epoch, desc=f"epoch {state.epoch + 1}", leave=False,
              disable=None if is_main_process() else True) as progress:
        for images, labels in batches:
            step = state.global_step + 1
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(images)
            loss = criterion(logits, labels)
            loss.backward()
            # the loss and the batch's correct count reach the host in one copy
            loss_value, correct = monitor.after_backward(step, loss, also=(logits.argmax(1) == labels).sum())
            n, correct = labels.size(0), int(correct)
            if enabled():  # one all-reduce: the global batch's figures, and whether any rank must stop
                loss_sum, correct, n, bad, stopping = sum_over_ranks(
                    [loss_value * n, correct, n, monitor.nonfinite is not None, stop.requested])
                loss_value, correct, n = loss_sum / n, int(correct), int(n)
                if bad:
                    monitor.nonfinite_elsewhere(step)
            else:
                stopping = stop.requested
            if monitor.nonfinite:  # a NaN/Inf loss: stop before stepping
                return {"loss": float("nan"), "acc": state.epoch_acc, "complete": False, "diverged": True}
            optimizer.step()  # the monitor reads the gradients here, as the optimizer uses them
            if monitor.nonfinite:  # NaN/Inf gradients: nothing from this step on is saved
                return {"loss": float("nan"), "acc": state.epoch_acc, "complete": False, "diverged": True}
            state.step_done(loss_value, correct, n)
            monitor.after_step(step, {LOSS: {"train": loss_value}, ACCURACY: {"train": state.epoch_acc}})
            progress.set_postfix(loss=f"{loss_value:.4f}", acc=f"{state.epoch_acc:.2%}", refresh=False)
            progress.update(1)
            if stopping:
                break
    return {"loss": state.epoch_loss, "acc": state.epoch_acc, "complete": not stopping, "diverged": False}


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion, device: torch.device, classes: int) -> dict:
    """Mean loss and accuracy over every sample of `loader`, and the confusion matrix.

    criterion must average over the batch (as CrossEntropyLoss does); returns {'loss', 'acc', 'total',
    'confusion': (classes, classes) int64 CPU tensor, rows true class, columns predicted}.
    Counts stay on the device until the end: one host copy per pass. Under torchrun each rank sees its
    own shard (see tools.training.batches) and the sums are added over the ranks.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(classes * classes, device=device, dtype=torch.int64)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += criterion(logits, labels).double() * labels.size(0)
        confusion += torch.bincount(labels * classes + logits.argmax(1), minlength=classes * classes)
    all_reduce_sum(loss_sum)
    all_reduce_sum(confusion)
    confusion = confusion.view(classes, classes).cpu()
    total = int(confusion.sum())
    return {"loss": loss_sum.item() / max(total, 1), "acc": confusion.trace().item() / max(total, 1),
            "total": total, "confusion": confusion}
