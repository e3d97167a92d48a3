import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model import LeNet
from tools.training import checkpoint as ckpt
from tools.training.checkpoint import load_checkpoint, load_model_state, restore_rng_states, rng_states, save_checkpoint
from tools.cli.errors import UserError


def test_save_is_atomic_a_failure_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def dies_halfway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed mid-write
    monkeypatch.setattr(ckpt.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 1


def test_rng_states_round_trip_every_generator(tmp_path):
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    save_checkpoint({"rng": rng_states(generator)}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10, generator=generator))
    torch.manual_seed(9), np.random.seed(9), random.seed(9), generator.manual_seed(9)
    restore_rng_states(load_checkpoint(tmp_path / "c.pt")["rng"], generator)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10, generator=generator))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])


class WritesAFile:
    """Unpickling this runs code: it would create the file named in it."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": WritesAFile(target)}, f, protocol=2)
    torch.save({"model": WritesAFile(target)}, tmp_path / "evil_torch.pt")
    for path in (evil, tmp_path / "evil_torch.pt"):
        with pytest.raises(UserError, match="refusing to load"):
            load_checkpoint(path)
    assert not target.exists()


def test_damaged_and_missing_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="damaged or not a checkpoint|refusing"):
        load_checkpoint(tmp_path / "junk.pt")


def test_a_checkpoint_of_another_shape_names_the_keys():
    three_classes = LeNet(classes=3).state_dict()
    with pytest.raises(UserError, match=r"fc3\.weight \(3, 84\) vs \(2, 84\)"):
        load_model_state(LeNet(classes=2), three_classes, Path("other.pt"))
    other_model = {"linear.weight": torch.zeros(2, 2)}
    with pytest.raises(UserError, match="missing: conv1.weight.*unexpected: linear.weight"):
        load_model_state(LeNet(), other_model, Path("other.pt"))
