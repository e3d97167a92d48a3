"""Where a training run stands: epochs and steps done, the best epoch, the history, and where an
interrupted epoch stopped. Saved in every checkpoint through `state_dict()` / `load_state_dict()`."""
import math
from dataclasses import asdict, dataclass, field


def no_best() -> dict:
    """The best epoch before any: every real epoch beats it."""
    return {"acc": -1.0, "loss": math.inf, "epoch": 0}


def new_epoch_sums() -> dict:
    """An epoch's running sums before its first step."""
    return {"loss_sum": 0.0, "correct": 0, "seen": 0}


@dataclass
class TrainState:
    """The counters and records of a run; `train_one_epoch` advances them step by step, so that a
    checkpoint taken at any step (after a signal) holds exactly where the run is.

    epoch: epochs completed; global_step: optimizer steps done; best: {'acc', 'loss', 'epoch'} of the
    best valid accuracy so far (ties to the lower loss; epoch 0: none yet); history: {'train': [(step,
    loss)] per step, 'valid': [(step, loss)], 'train_acc', 'valid_acc': [(step, accuracy)] per epoch}; last: the last completed epoch's {'train': {'loss', 'acc'},
    'valid': {'loss', 'acc', 'confusion'}, 'verdict': the monitor's, when on}. An interrupted epoch: batches_in_epoch trained so far,
    epoch_sums (the running loss sum and correct and seen counts) and epoch_rng (this process's random
    states where the epoch began). resume_rng is not saved by this object: the checkpointer sets it on
    resume to the random states at the interruption, for `train_one_epoch` to restore.
    """
    epoch: int = 0
    global_step: int = 0
    best: dict = field(default_factory=no_best)
    history: dict = field(default_factory=lambda: {"train": [], "valid": []})
    last: dict | None = None
    batches_in_epoch: int = 0
    epoch_sums: dict = field(default_factory=new_epoch_sums)
    epoch_rng: dict | None = None
    resume_rng: dict | None = None

    SAVED = ("epoch", "global_step", "best", "history", "last", "batches_in_epoch", "epoch_sums")

    def state_dict(self) -> dict:
        """Plain numbers, lists and dicts (safe for torch.load(weights_only=True)); epoch_rng is saved
        by the checkpointer, with every rank's."""
        saved = asdict(self)
        return {key: saved[key] for key in self.SAVED}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()` (a whole checkpoint will do: other keys are ignored)."""
        for key in self.SAVED:
            if key in state:
                setattr(self, key, state[key] if key != "epoch_sums" or state[key] else new_epoch_sums())

    @property
    def mid_epoch(self) -> bool:
        """True when the current epoch was interrupted after some of its batches."""
        return self.batches_in_epoch > 0

    def step_done(self, loss: float, correct: int, seen: int) -> None:
        """One optimizer step of the current epoch: `loss` is the batch's mean, over `seen` samples."""
        self.global_step += 1
        self.batches_in_epoch += 1
        sums = self.epoch_sums
        sums["loss_sum"] += loss * seen
        sums["correct"] += correct
        sums["seen"] += seen
        self.history["train"].append((self.global_step, loss))

    @property
    def epoch_loss(self) -> float:
        """Mean train loss of the current epoch so far."""
        return self.epoch_sums["loss_sum"] / max(self.epoch_sums["seen"], 1)

    @property
    def epoch_acc(self) -> float:
        """Train accuracy of the current epoch so far (the running accuracy)."""
        return self.epoch_sums["correct"] / max(self.epoch_sums["seen"], 1)

    def end_epoch(self, valid: dict, averaged: dict | None = None, verdict=None) -> bool:
        """Close the current epoch with its valid figures ({'loss', 'acc', 'confusion'}), with SWA the
        averaged weights' ({'loss', 'acc'}), and the monitor's verdict (a `tools.monitor.verdict.Verdict`, kept
        as its dict); True when it is the best so far (a higher valid accuracy, or the same with a lower
        loss)."""
        self.epoch += 1
        self.last = {"train": {"loss": self.epoch_loss, "acc": self.epoch_acc},
                     "valid": {"loss": valid["loss"], "acc": valid["acc"], "confusion": valid["confusion"].tolist()}}
        if verdict is not None:
            self.last["verdict"] = verdict.as_dict()
        if averaged is not None:
            self.last["valid_swa"] = {"loss": averaged["loss"], "acc": averaged["acc"]}
        self.history["valid"].append((self.global_step, valid["loss"]))
        for name, acc in (("train_acc", self.epoch_acc), ("valid_acc", valid["acc"])):  # the accuracy curves
            self.history.setdefault(name, []).append((self.global_step, acc))
        self.history.setdefault("status", []).append(verdict.status if verdict is not None else None)
        self.batches_in_epoch, self.epoch_sums, self.epoch_rng = 0, new_epoch_sums(), None
        is_best = (valid["acc"], -valid["loss"]) > (self.best["acc"], -self.best["loss"])
        if is_best:
            self.best = {"acc": valid["acc"], "loss": valid["loss"], "epoch": self.epoch}
        return is_best
