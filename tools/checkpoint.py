"""Checkpoints: written atomically, loaded safely, with every RNG state needed for an exact resume."""
import os
import pickle
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from tools.errors import UserError


def save_checkpoint(state: dict, path: Path) -> Path:
    """torch.save `state` to `path` atomically: a temporary file in the same folder, fsync, os.replace.

    A kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path, required: tuple = ()) -> dict:
    """A checkpoint dict, loaded on the CPU with weights_only=True (no code in a file is ever run).

    UserError for a missing file, a damaged file, one that holds anything but tensors and plain data,
    or one without the `required` keys (a file that is not a train_rmb.py checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"refusing to load {path}: it holds more than weights and plain data, and loading "
                        f"it could run code ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"cannot read checkpoint {path} ({type(err).__name__}); it is damaged or not "
                        "a checkpoint") from None
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a train_rmb.py checkpoint (it lacks {', '.join(missing)})")
    return checkpoint


def find_resume_checkpoint(resume: str, logdir: Path, run_name: str) -> Path | None:
    """The checkpoint that --resume names: a file, a run folder, or 'auto' = the run folder of `run_name`
    in `logdir` whose checkpoint was saved last (None when there is none yet)."""
    if resume == "auto":
        runs = sorted(Path(logdir).glob(f"*_{run_name}/checkpoint_last.pt"), key=lambda p: p.stat().st_mtime)
        return runs[-1] if runs else None
    path = Path(resume)
    return path / "checkpoint_last.pt" if path.is_dir() else path


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
