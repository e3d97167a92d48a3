"""Checkpoints: written atomically, loaded safely, with every RNG state needed for an exact resume.

`Checkpointer` saves a run's whole state (model, optimizer, scheduler, training state, monitor and
every random state) into its folder and restores it, the random states last.
"""
import glob
import os
import pickle
import random
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from tools.cli.errors import UserError
from tools.training import distributed

# What a checkpoint of train_rmb.py holds at least: resuming refuses any other file.
RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "global_step", "batches_in_epoch", "best",
               "history", "rng", "epoch_rng", "args")


def split_sizes(data: dict) -> dict[str, int]:
    """Images per split, as a checkpoint keeps them (a resumed run compares them with the folder's now)."""
    return {name: len(data[name]) if data.get(name) else 0 for name in ("train", "valid", "test")}


def save_checkpoint(state: dict, path: Path) -> Path:
    """torch.save `state` to `path` atomically: a temporary file in the same folder, fsync, os.replace.

    A kill at any moment leaves either the old file or the new one, never a torn one; the temporary
    file a kill left behind is removed by the next save. A full disk or a folder that cannot be
    written is a UserError that says the previous checkpoint is kept.
    """
    path = Path(path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # from a process killed mid-save
        leftover.unlink(missing_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)):  # torch.save's zip writer reports a full disk as RuntimeError
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            kept = "the previous one is kept" if path.exists() else "no earlier one exists"
            raise UserError(f"cannot save checkpoint {path} ({reason}); {kept}. Free some space (or make the "
                            "folder writable), then resume the run with --resume") from None
        raise
    return path


# torch's refusal of a global that weights_only does not allow, when it names a dotted Python identifier
DANGEROUS = re.compile(r"Unsupported global: GLOBAL ([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*) was not an allowed")


def load_checkpoint(path: Path, required: tuple = ()) -> dict:
    """A checkpoint dict, loaded on the CPU with weights_only=True (no code in a file is ever run).

    UserError for a missing file, a damaged file, one that holds anything but tensors and plain data,
    or one without the `required` keys (a file that is not a train_rmb.py checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file: give a .pt file (checkpoint_last.pt or checkpoint_best.pt) "
                        "or a run folder")
    damaged = (f"cannot read checkpoint {path}: it is damaged or not a checkpoint (try the run's other one, "
               "checkpoint_best.pt or checkpoint_last.pt)")
    try:
        with warnings.catch_warnings():  # a damaged file's odd header makes torch warn before it fails
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = DANGEROUS.search(str(err))
        if named:  # it names a real class or function to import: code, not data (damaged bytes name garbage)
            raise UserError(f"refusing to load {path}: it holds more than weights and plain data, and loading "
                            f"it could run code (it asks for {named.group(1)})") from None
        raise UserError(damaged) from None
    except Exception:  # noqa: BLE001 - any failure to unpickle bytes from a file is a damaged file, not a bug
        raise UserError(damaged) from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a train_rmb.py checkpoint (it holds a {type(checkpoint).__name__}, not a dict)")
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a train_rmb.py checkpoint (it lacks {', '.join(missing)})")
    return checkpoint


def load_model_state(model: torch.nn.Module, state_dict: dict, source: Path) -> None:
    """model.load_state_dict(state_dict), with a UserError that names the mismatched keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                   if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("shape (checkpoint vs model)", wrong_shape)) if keys]
        raise UserError(f"checkpoint {source} does not fit this model ({'; '.join(parts)})")
    model.load_state_dict(state_dict)


def rng_states(loader_generator: torch.Generator | None = None) -> dict:
    """Every random-number state a run uses, as tensors and plain data (safe for weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if loader_generator is not None:
        states["loader"] = loader_generator.get_state()
    return states


def restore_rng_states(states: dict, loader_generator: torch.Generator | None = None) -> None:
    """Undo `rng_states`: every generator continues exactly where it was saved."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if loader_generator is not None and "loader" in states:
        loader_generator.set_state(states["loader"])


class Checkpointer:
    """Saves a run's state into its folder atomically, and restores it with the random states last.

    `stateful`: name -> an object with state_dict() / load_state_dict(): model (the unwrapped one),
    optimizer, scheduler, monitor, and `state`, the TrainState, whose fields sit at the top level of
    the checkpoint (epoch, global_step, best, history, ...). `generator`: the train loader's.
    `data`: `load_splits`' dict; its classes and normalisation are saved beside them, for whoever reads
    the checkpoint (tools.inspect_run).
    Under torchrun every rank calls save() at the same points (the random states of all ranks are
    gathered: each rank resumes its own augmentation) and rank 0 alone writes.
    """

    def __init__(self, run, generator: torch.Generator, data: dict, **stateful):
        self.run = run
        self.generator = generator
        self.facts = {"classes": data["classes"], "norm": {"mean": data["mean"], "std": data["std"]},
                      "images": split_sizes(data)}
        self.state = stateful.pop("state")
        self.stateful = stateful

    def state_dict(self) -> dict:
        """The checkpoint: a plain dict of state_dicts, numbers and lists (safe for weights_only)."""
        rng = (rng_states(self.generator), self.state.epoch_rng)
        if distributed.enabled():  # a collective: every rank gets here at the same point
            ranks = distributed.gather(rng)
            rng = ([r for r, _ in ranks], [e for _, e in ranks])
        checkpoint = {name: obj.state_dict() for name, obj in self.stateful.items()} | self.state.state_dict()
        return checkpoint | {"rng": rng[0], "epoch_rng": rng[1], "world_size": self.run.world_size,
                             "model_class": type(self.stateful["model"]).__name__,
                             "args": self.run.saved_args()} | self.facts

    def save(self, best: bool = False) -> None:
        """checkpoint_last.pt, and checkpoint_best.pt too when `best`."""
        checkpoint = self.state_dict()
        if self.run.is_main:
            for name in ("checkpoint_last.pt", "checkpoint_best.pt")[:2 if best else 1]:
                save_checkpoint(checkpoint, self.run.dir / name)

    def restore(self, checkpoint: dict | None) -> None:
        """Continue from `checkpoint` (None: a new run, nothing to do): every state as it was saved,
        then the random states, last, so that nothing draws from them before training does. Mid-epoch,
        the random states are those where the epoch began; those of the interruption go to the
        training state, for `train_one_epoch` to restore after it has drawn the epoch's first batches."""
        if checkpoint is None:
            return
        try:
            self._restore(checkpoint)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError, RuntimeError, ArithmeticError) as err:
            # it unpickled, but what it holds is not what a checkpoint holds (bytes changed in its structure)
            raise UserError(f"the checkpoint in {self.run.dir} is damaged: {type(err).__name__} while restoring it "
                            "(try the run's other one, checkpoint_best.pt or checkpoint_last.pt)") from None

    def _restore(self, checkpoint: dict) -> None:
        for name, obj in self.stateful.items():
            if name not in checkpoint and name in ("swa", "monitor"):  # saved by later versions only
                obj.load_state_dict({} if name == "swa" else {"first_total_norm": checkpoint.get("first_total_norm")})
            elif name == "model":
                load_model_state(obj, checkpoint["model"], self.run.dir)
            else:
                obj.load_state_dict(checkpoint[name])
        self.state.load_state_dict(checkpoint)
        self.apply_overrides()
        if checkpoint.get("world_size", 1) != self.run.world_size:
            self.run.say(f"note: the run was saved on {checkpoint.get('world_size', 1)} process(es) and goes on "
                         f"with {self.run.world_size}: it continues, but not bit for bit")
            return
        rank = self.run.rank  # under torchrun the random states are a list, one per rank
        rng, epoch_rng = (states[rank] if isinstance(states, list) else states
                          for states in (checkpoint["rng"], checkpoint["epoch_rng"]))
        if self.state.mid_epoch:
            if epoch_rng is None:  # an epoch begun after a resume on another number of processes
                self.run.say("note: the interrupted epoch's random states were not saved; it continues, "
                             "but not bit for bit")
                return
            self.state.epoch_rng, self.state.resume_rng, rng = epoch_rng, rng, epoch_rng
        restore_rng_states(rng, self.generator)

    def apply_overrides(self) -> None:
        """Hyper-parameters given anew on resume (run.overrides: --lr, --momentum, --weight-decay) replace
        the restored optimizer's: every parameter group's lr scaled by new / old (groups keep their
        ratios; so does the schedule's base), momentum and weight decay set. A new learning rate also starts the optimizer's running
        state afresh (momentum buffers, Adam's moments): gathered at the old rate, after a divergence
        they would throw the weights off again at the new one."""
        optimizer, scheduler = self.stateful.get("optimizer"), self.stateful.get("scheduler")
        if optimizer is not None and "lr" in self.run.overrides:
            optimizer.state.clear()
        for flag, (old, new) in self.run.overrides.items():
            if optimizer is None or flag not in ("lr", "momentum", "weight_decay"):
                continue
            for group in optimizer.param_groups:
                if flag == "lr":
                    group["lr"] *= new / old
                    group["initial_lr"] = group.get("initial_lr", old) * new / old
                elif flag in group:
                    group[flag] = new
            if flag == "lr" and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * new / old for lr in scheduler.base_lrs]

    def load_best(self) -> None:
        """The best epoch's weights (checkpoint_best.pt) into the model, read by rank 0 and sent to every rank."""
        best = load_checkpoint(self.run.dir / "checkpoint_best.pt")["model"] if self.run.is_main else None
        load_model_state(self.stateful["model"], distributed.broadcast(best), self.run.dir)
