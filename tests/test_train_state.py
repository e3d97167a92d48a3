"""The training state, the monitor's state and the checkpointer: each round-trips through a checkpoint
file, and restoring leaves the random generators exactly where they were saved."""
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from model import LeNet
from tools.training.checkpoint import Checkpointer, load_checkpoint, restore_rng_states, save_checkpoint
from tools.monitor import TrainingMonitor
from tools.training.train_state import TrainState


DATA = {"classes": ["1", "100"], "mean": [0.5] * 3, "std": [0.25] * 3}  # what the checkpointer keeps of the data


def a_fake_run(tmp_path: Path) -> SimpleNamespace:
    """What the checkpointer needs of a RunFolder: one process, writing into tmp_path."""
    return SimpleNamespace(dir=tmp_path, is_main=True, rank=0, world_size=1, say=print, overrides={},
                           saved_args=lambda: {"lr": 0.01, "data_dir": "somewhere"})


def a_few_steps(seed=0, steps=3, log_interval=2):
    """LeNet, its SGD optimizer and StepLR, a monitor and a TrainState after `steps` real steps."""
    torch.manual_seed(seed)
    model = LeNet().initialize_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    monitor, state = TrainingMonitor(model, log_interval=log_interval), TrainState()
    x, y = torch.randn(steps, 8, 3, 32, 32), torch.randint(0, 2, (steps, 8))
    for i in range(steps):
        optimizer.zero_grad()
        logits = model(x[i])
        loss = nn.functional.cross_entropy(logits, y[i])
        loss.backward()
        value = monitor.after_backward(state.global_step + 1, loss)
        optimizer.step()
        state.step_done(value, int((logits.argmax(1) == y[i]).sum()), 8)
        monitor.after_step(state.global_step)
    return model, optimizer, scheduler, monitor, state


def test_train_state_round_trips_through_a_checkpoint_file(tmp_path):
    state = TrainState()
    for loss, correct in ((0.7, 3), (0.6, 5), (0.4, 8)):
        state.step_done(loss, correct, 8)
    state.end_epoch({"loss": 0.5, "acc": 0.75, "confusion": torch.tensor([[3, 1], [1, 3]])})
    state.step_done(0.3, 7, 8)  # an epoch interrupted after one step
    save_checkpoint(state.state_dict(), tmp_path / "c.pt")
    again = TrainState()
    again.load_state_dict(load_checkpoint(tmp_path / "c.pt"))
    for key in TrainState.SAVED:
        assert getattr(again, key) == getattr(state, key), key
    assert again.mid_epoch and again.batches_in_epoch == 1 and again.global_step == 4
    assert again.best == {"acc": 0.75, "loss": 0.5, "epoch": 1}
    assert again.epoch_loss == pytest.approx(0.3) and again.epoch_acc == pytest.approx(7 / 8)
    assert again.last["train"] == {"loss": pytest.approx((0.7 + 0.6 + 0.4) / 3), "acc": pytest.approx(16 / 24)}


def test_best_epoch_is_the_highest_accuracy_ties_to_the_lower_loss():
    state = TrainState()
    confusion = torch.zeros(2, 2, dtype=torch.int64)
    results = [state.end_epoch({"loss": loss, "acc": acc, "confusion": confusion})
               for loss, acc in ((0.6, 0.5), (0.5, 0.9), (0.7, 0.9), (0.4, 0.9), (0.1, 0.8))]
    assert results == [True, True, False, True, False] and state.best == {"acc": 0.9, "loss": 0.4, "epoch": 4}


def test_the_monitor_state_round_trips_and_the_resumed_monitor_judges_the_same(tmp_path):
    model, optimizer, _, monitor, state = a_few_steps(steps=3)  # mid-epoch: the running sums matter
    save_checkpoint({"monitor": monitor.state_dict()}, tmp_path / "c.pt")
    resumed = TrainingMonitor(model, log_interval=2)
    resumed.load_state_dict(load_checkpoint(tmp_path / "c.pt")["monitor"])
    assert resumed.state_dict() == monitor.state_dict()
    # every norm and the update ratios at the epoch's first step and at the logging step 2 (step 3 checks
    # only the first gradient for NaN/Inf: every norm is read at every MEASURE_EVERY-th step)
    assert monitor.state_dict()["norm_steps"] == [2] * 10 and monitor.state_dict()["ratio_steps"] == [2] * 10
    assert monitor.state_dict()["had_grad"] == [True] * 10
    first, second = monitor.end_epoch(3, 0.6), resumed.end_epoch(3, 0.6)
    assert str(first) == str(second) and resumed.epochs == monitor.epochs == 1
    assert "median update ratio" in str(second)  # the ratios of steps 1 and 2, carried over the resume
    fresh = TrainingMonitor(model, log_interval=2)
    assert "median update ratio" not in str(fresh.end_epoch(3, 0.6))  # without the state: not the same verdict


def test_the_checkpointer_round_trips_every_state(tmp_path):
    run = a_fake_run(tmp_path)
    model, optimizer, scheduler, monitor, state = a_few_steps()
    scheduler.step()
    generator = torch.Generator().manual_seed(3)
    saved = Checkpointer(run, generator, DATA, model=model, optimizer=optimizer,
                         scheduler=scheduler, monitor=monitor, state=state)
    saved.save(best=True)
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert load_checkpoint(tmp_path / "checkpoint_best.pt").keys() == checkpoint.keys()
    assert checkpoint["classes"] == ["1", "100"] and checkpoint["model_class"] == "LeNet"
    assert checkpoint["args"]["data_dir"] == "somewhere" and checkpoint["world_size"] == 1

    torch.manual_seed(99)
    model2 = LeNet().initialize_weights()
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    monitor2, state2 = TrainingMonitor(model2, log_interval=2), TrainState()
    restored = Checkpointer(run, torch.Generator(), DATA, model=model2, optimizer=optimizer2,
                            scheduler=scheduler2, monitor=monitor2, state=state2)
    restored.restore(checkpoint)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, model2.state_dict()[key]), key
    for index, buffers in optimizer.state_dict()["state"].items():
        assert torch.equal(buffers["momentum_buffer"], optimizer2.state_dict()["state"][index]["momentum_buffer"])
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() == [0.025]
    assert monitor2.state_dict() == monitor.state_dict()
    assert all(getattr(state2, key) == getattr(state, key) for key in TrainState.SAVED)


def draws(generator: torch.Generator):
    return torch.rand(4), np.random.rand(4), random.random(), torch.randperm(20, generator=generator)


def same_draws(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2] and torch.equal(a[3], b[3])


@pytest.mark.parametrize("mid_epoch", [False, True])
def test_restoring_draws_no_random_number_after_setting_the_random_states(tmp_path, mid_epoch):
    model, optimizer, scheduler, monitor, state = a_few_steps()
    generator = torch.Generator().manual_seed(5)
    state.epoch_rng = None
    if mid_epoch:  # where the interrupted epoch began, then a few draws until the interruption
        from tools.training.checkpoint import rng_states

        state.epoch_rng = rng_states(generator)
        draws(generator)
    else:
        state.end_epoch({"loss": 0.5, "acc": 0.5, "confusion": torch.zeros(2, 2, dtype=torch.int64)})
    stateful = dict(model=model, optimizer=optimizer, scheduler=scheduler, monitor=monitor, state=state)
    Checkpointer(a_fake_run(tmp_path), generator, DATA, **stateful).save()
    checkpoint = load_checkpoint(tmp_path / "checkpoint_last.pt")

    # independently: the states a resumed run must start from, set directly, and what they draw
    expected_from = checkpoint["epoch_rng"] if mid_epoch else checkpoint["rng"]
    plain = torch.Generator()
    restore_rng_states(expected_from, plain)
    expected = draws(plain)

    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    new_state, new_generator = TrainState(), torch.Generator().manual_seed(123)
    torch.manual_seed(7)
    model2 = LeNet().initialize_weights()  # built before the restore, as train_rmb.py does
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    Checkpointer(a_fake_run(tmp_path), new_generator, DATA, model=model2, optimizer=optimizer2,
                 scheduler=torch.optim.lr_scheduler.StepLR(optimizer2, 1), monitor=TrainingMonitor(model2),
                 state=new_state).restore(checkpoint)
    assert same_draws(draws(new_generator), expected)
    assert new_state.mid_epoch == mid_epoch
    if mid_epoch:  # the interruption's own states wait for train_one_epoch, after the epoch's first batches
        restore_rng_states(checkpoint["rng"], plain)
        at_interruption = draws(plain)
        resumed = torch.Generator()
        restore_rng_states(new_state.resume_rng, resumed)
        assert same_draws(draws(resumed), at_interruption)
