"""The verdict: each rule against figures built by hand, the loop checks in real loops (mistakes caught,
correct loops left alone), the data checks against a brute-force comparison, and the labelled suite of
broken and healthy runs (every problem named first in the epoch its evidence appears, no false alarm)."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, requires_real_data
from torch import nn

from model import LeNet
from tools.monitor.activations import DIAGNOSED, activation_stats
from tools.data.checks import leaks, missing_classes
from tools.monitor.data_findings import split_findings
from tools.monitor.loop_checks import LoopWatch, bounded_before_log_softmax
from tools.monitor import TrainingMonitor
from tools.suites.scenarios import BY_NAME, SCENARIOS, found, run_scenario
from tools.monitor.epoch_figures import ACCUMULATION_EXCESS, OVERFIT_EPOCHS, PLATEAU_EPOCHS, EpochFigures
from tools.monitor.verdict import judge
from tools.monitor.curve_rules import slope

NORMS = {"a.weight": 0.1, "b.weight": 0.2}


def figures(**kw) -> EpochFigures:
    return EpochFigures(NORMS, kw.pop("loss", 0.5), 2, **kw)


# ---- rules on figures built by hand -----------------------------------------------------------------

def test_overfitting_needs_a_learned_train_set_and_a_valid_loss_rising_epoch_after_epoch():
    rising = [{"train_loss": t, "valid_loss": v} for t, v in [(0.3, 0.40), (0.1, 0.45), (0.05, 0.5)]]
    assert judge(figures(loss=0.05, history=rising)).status == "overfitting"
    # the same valid losses with a train loss still high: a noisy valid loss, not overfitting
    noisy = [dict(h, train_loss=0.4) for h in rising]
    assert judge(figures(loss=0.4, history=noisy)).status == "healthy"
    # one rise only (a bounce), then down: not overfitting
    bounce = rising[:2] + [{"train_loss": 0.05, "valid_loss": 0.41}]
    assert judge(figures(loss=0.05, history=bounce)).status != "overfitting"
    assert len(rising) == OVERFIT_EPOCHS


def test_overfitting_is_not_a_valid_loss_still_low_or_near_the_train_loss():
    tiny = [{"train_loss": t, "valid_loss": v} for t, v in [(0.004, 1e-6), (0.003, 2e-6), (0.002, 3e-6)]]
    assert judge(figures(loss=0.002, history=tiny)).status == "converged"
    near = [{"train_loss": t, "valid_loss": v} for t, v in [(0.11, 0.05), (0.1, 0.06), (0.09, 0.18)]]
    assert judge(figures(loss=0.09, history=near)).status == "healthy"  # 2x the train loss: noise
    near[-1]["valid_loss"] = 0.3  # 3.3x: the gap that overfitting opens
    assert judge(figures(loss=0.09, history=near)).status == "overfitting"


def test_lr_too_low_is_not_a_decayed_lr_at_convergence_but_is_a_slow_net_at_chance():
    slow = {"a.weight": 5e-5, "b.weight": 5e-5}  # below the healthy band, above UPDATE_RATIO_LOW
    assert judge(figures(loss=0.70, update_ratios=slow)).status == "lr-too-low"  # at chance: not learning
    assert judge(figures(loss=0.40, update_ratios=slow)).status == "healthy"  # learning, slowly
    tiny = {"a.weight": 1e-7, "b.weight": 1e-7}
    assert judge(figures(loss=0.40, update_ratios=tiny)).status == "lr-too-low"
    assert judge(figures(loss=0.01, update_ratios=tiny)).status == "converged"  # StepLR decayed, loss low


def test_converged_is_never_said_while_the_valid_loss_rises():
    low = [{"train_loss": 0.05, "valid_loss": 0.01}, {"train_loss": 0.04, "valid_loss": 0.02}]
    verdict = judge(figures(loss=0.04, history=low))
    assert verdict.status == "healthy" and "rose from 0.01" in verdict.findings[0].evidence
    low[-1]["valid_loss"] = 0.009
    assert judge(figures(loss=0.04, history=low)).status == "converged"


def test_slope_is_the_least_squares_fit():
    values = [0.5, 0.52, 0.47, 0.55, 0.5]
    assert slope(values) == pytest.approx(np.polyfit(range(5), values, 1)[0])


def test_plateau_far_from_one_and_flat_names_the_one_class_predicted():
    flat = [{"train_acc": a, "valid_acc": 0.5} for a in (0.52, 0.5, 0.53, 0.5, 0.51)]
    verdict = judge(figures(history=flat, predicted=[20, 0]))
    assert verdict.status == "plateau" and "class 0 for 100%" in verdict.findings[0].evidence
    assert judge(figures(history=flat[1:])).status == "healthy"  # not yet PLATEAU_EPOCHS
    assert len(flat) == PLATEAU_EPOCHS
    learning = [dict(h, valid_acc=0.5 + 0.05 * i) for i, h in enumerate(flat)]  # valid rising 5 points an epoch
    assert judge(figures(history=learning)).status == "healthy"
    # the train accuracy climbing while the valid one stays at chance: memorising labels the inputs do not carry
    memorising = [dict(h, train_acc=0.5 + 0.05 * i) for i, h in enumerate(flat)]
    verdict = judge(figures(history=memorising))
    assert verdict.status == "plateau" and "memorises" in verdict.findings[0].evidence


def test_lr_too_high_is_named_before_the_dead_units_it_caused():
    history = [{"median_ratio": 0.05}, {"median_ratio": 0.002}]
    dead = {"relu1": {"dead": 0.9}}
    verdict = judge(figures(history=history, activations=dead, update_ratios={"a.weight": 0.002}))
    assert [f.name for f in verdict.problems] == ["lr-too-high", "dead-relu"]
    assert "units died after updates of 5.0e-02" in verdict.findings[0].evidence
    # without large updates before, the dead units are the finding
    calm = [{"median_ratio": 0.002}, {"median_ratio": 0.002}]
    assert judge(figures(history=calm, activations=dead, update_ratios={"a.weight": 0.002})).status == "dead-relu"


def test_a_spiking_loss_is_lr_too_high_but_one_outlier_is_not():
    assert judge(figures(steps={"median": 0.3, "max": 5.0, "spikes": 3})).status == "lr-too-high"
    assert judge(figures(steps={"median": 0.3, "max": 5.0, "spikes": 1})).status == "healthy"


def test_a_huge_first_loss_is_the_init_not_the_learning_rate():
    verdict = judge(figures(loss=1e6, first_loss=1e6, update_ratios={"a.weight": 10.0}))
    assert verdict.status == "exploding" and verdict.findings[0].where == "init"
    assert "lr-too-high" not in [f.name for f in verdict.findings]


def test_a_persisting_finding_is_shortened_and_names_when_it_began():
    monitor = TrainingMonitor(LeNet(), classes=2)
    history = []
    for epoch in range(2):
        monitor.grads.ratio_sum = [1e-8] * len(monitor.params)  # every parameter barely moves
        monitor.grads.ratio_steps = [1] * len(monitor.params)
        history.append(monitor.end_epoch(epoch + 1, 0.69))
    first, second = (v.lines()[0] for v in history)
    assert first.startswith("lr-too-low:") and "Fix:" in first
    assert second.startswith("lr-too-low (since epoch 1):") and "Fix:" not in second
    assert history[1].as_dict()["findings"][0]["first_epoch"] == 1


# ---- the loop checks in real loops -------------------------------------------------------------------

def lenet_loop(zero_grad=True, micro_batches=1, set_to_none=True, steps=6):
    """A plain loop with the monitor: returns the gradient-accumulation figures."""
    torch.manual_seed(0)
    model = LeNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with TrainingMonitor(model, log_interval=100, optimizer=optimizer) as monitor:
        for step in range(1, steps + 1):
            if zero_grad:
                optimizer.zero_grad(set_to_none=set_to_none)
            for _ in range(micro_batches):  # gradient accumulation on purpose: zero_grad once per step
                nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 2, (8,))).backward()
            monitor.after_backward(step, torch.tensor(0.7))
            optimizer.step()
            monitor.after_step(step)
        return monitor.loop.figures()["accumulated"]


def test_missing_zero_grad_is_caught_and_accumulation_on_purpose_is_not():
    missing = lenet_loop(zero_grad=False)
    assert missing["checked"] == 5 and missing["steps"] >= 3 and missing["excess"] > ACCUMULATION_EXCESS
    for kwargs in ({}, {"set_to_none": False}, {"micro_batches": 3}):
        assert lenet_loop(**kwargs)["steps"] == 0, kwargs


def test_evaluation_in_train_mode_and_with_autograd_are_counted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 3, 2, 2)
    with LoopWatch(model) as watch:
        nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])).backward()  # training: not counted
        watch.backward_done()              # what the monitor's after_backward reports
        model(x)                           # validation in training mode with autograd on: counted at the end
        seen = watch.figures()
        assert seen["evaluations"] == seen["eval_autograd"] == seen["eval_train_mode"] == 1
        watch.new_epoch()
        with torch.no_grad():
            model(x)                       # validation, model.eval() forgotten
        model.eval()
        model(x)                           # validation, torch.no_grad() forgotten
        with torch.no_grad():
            model(x)                       # right
        seen = watch.figures()
    assert seen["evaluations"] == 3 and seen["eval_train_mode"] == 1 and seen["eval_autograd"] == 1
    assert seen["train_mode_layers"] == "BatchNorm1d"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # closed


def test_a_bounded_activation_before_the_loss_is_found_in_the_graph_wherever_it_is():
    """A softmax (of the class axis or another one), a sigmoid or a tanh feeding CrossEntropyLoss's
    log_softmax, directly or through views and permutes; not logits, nor an activation further up."""
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    ce = nn.functional.cross_entropy
    assert bounded_before_log_softmax(ce(logits.softmax(1), labels)) == "a softmax"
    assert bounded_before_log_softmax(nn.CrossEntropyLoss(label_smoothing=0.1)(nn.Softmax(1)(logits), labels)) == "a softmax"
    assert bounded_before_log_softmax(ce(logits.softmax(0), labels)) == "a softmax"  # the wrong axis
    assert bounded_before_log_softmax(ce(torch.sigmoid(logits), labels)) == "a sigmoid"
    assert bounded_before_log_softmax(ce(torch.tanh(logits), labels)) == "a tanh"
    sequence = torch.randn(2, 5, 3, requires_grad=True)  # (batch, time, classes): a permute to (batch, classes, time)
    assert bounded_before_log_softmax(ce(sequence.sigmoid().permute(0, 2, 1), torch.zeros(2, 5, dtype=torch.long))) \
        == "a sigmoid"
    assert bounded_before_log_softmax(ce(logits.softmax(1).view(4, 3), labels)) == "a softmax"
    assert bounded_before_log_softmax(ce(logits, labels)) is None
    assert bounded_before_log_softmax(nn.functional.nll_loss(logits.log_softmax(1), labels)) is None
    assert bounded_before_log_softmax(ce(nn.Linear(3, 3)(torch.sigmoid(logits)), labels)) is None  # a layer between


def test_input_range_is_the_first_training_batch_of_the_epoch():
    model = LeNet()
    x = torch.rand(4, 3, 32, 32) * 255
    with LoopWatch(model) as watch:
        model(x)
        model(torch.zeros(4, 3, 32, 32))  # later batches are not measured
        inputs = watch.figures()["inputs"]
    assert inputs["min"] == pytest.approx(x.min().item()) and inputs["max"] == pytest.approx(x.max().item())
    assert inputs["mean"] == pytest.approx(x.mean().item(), rel=1e-5) and inputs["std"] == pytest.approx(x.std().item(), rel=1e-4)


def test_saturation_share_matches_a_count_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(50, 30), nn.Tanh(), nn.Linear(30, 30), nn.Sigmoid())
    nn.init.normal_(model[0].weight, std=1.0)
    x = torch.randn(64, 50)
    with activation_stats(model, types=DIAGNOSED, moments=False) as acts:
        model(x)
    tanh = torch.tanh(model[0](x))
    sigmoid = model(x)
    stats = acts.result()
    assert stats["1"]["saturated"] == pytest.approx((tanh.abs() > 0.98).float().mean().item())
    assert stats["3"]["saturated"] == pytest.approx(((sigmoid < 0.01) | (sigmoid > 0.99)).float().mean().item())


def test_a_torchvision_resnet_with_a_frozen_block_and_an_unused_layer():
    """The issue's user loop: gradients accumulated although some parameters get none; the frozen block
    shown as frozen; the unused layer named; never 'converged' on a total norm of 0."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=2)
    model.unused = nn.Linear(4, 4)
    model.layer1.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    with TrainingMonitor(model, optimizer=optimizer) as monitor:
        for step in range(1, 5):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
            loss.backward()
            monitor.after_backward(step, loss)
            optimizer.step()
            monitor.after_step(step)
        verdict = monitor.end_epoch(4, loss.item())
    by_name = {f.name: f for f in verdict.findings}
    assert verdict.status == "unchanged-weights" and by_name["unchanged-weights"].where == "unused"
    assert by_name["frozen"].where == "layer1" and "converged" not in str(verdict)  # its 10 layers, as one module
    assert monitor.first_total_norm > 0


# ---- the data checks ---------------------------------------------------------------------------------

def test_leaks_and_missing_classes_against_a_brute_force_comparison():
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (30, 3, 4, 4), dtype=torch.uint8, generator=g)
    valid = torch.cat([train[[3, 7]], torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=g)])
    found_leaks = leaks({"train": train, "valid": valid})
    brute = [i for i, v in enumerate(valid) if any(torch.equal(v, t) for t in train)]
    assert found_leaks == {"valid": brute} == {"valid": [0, 1]}
    assert missing_classes({"train": [0, 1, 2], "valid": [0, 0], "test": [0, 1, 2]}, ["a", "b", "c"]) == \
        [("b", "valid"), ("c", "valid")]
    findings = split_findings({"train": (train, [0] * 15 + [1] * 15), "valid": (valid, [0] * 7)}, ["1", "100"])
    assert [f.name for f in findings] == ["data-leak", "class-missing"]
    assert findings[0].evidence.startswith("2 of 7 valid images")


# ---- the labelled suite ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The generated set the project uses by default (200 images), loaded."""
    from tools.data.image_folder import load_splits
    from tools.data.synthetic import generate

    return load_splits(generate(tmp_path_factory.mktemp("suite") / "rmb"))


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_every_scenario_is_named_first_in_the_epoch_its_evidence_appears(name, generated):
    scenario = BY_NAME[name]
    result = run_scenario(scenario, generated, torch.device("cpu"))
    verdicts = result["verdicts"]
    if scenario.expected == "healthy":  # no false alarm, in any epoch
        assert all(found(v, "healthy") for v in verdicts), [str(v) for v in verdicts]
    else:
        assert result["detected"] == scenario.evidence_epoch, [v.status for v in verdicts]
        assert all(v.status == scenario.expected for v in verdicts[scenario.evidence_epoch - 1:])


@requires_real_data
@pytest.mark.parametrize("name", ["healthy", "healthy-adam"])
def test_healthy_runs_on_the_real_photos_raise_no_alarm(name):
    from tools.data.image_folder import load_splits

    result = run_scenario(BY_NAME[name], load_splits(REAL_DATA), torch.device("cpu"), epochs=30)
    assert all(found(v, "healthy") for v in result["verdicts"]), [str(v) for v in result["verdicts"]]


def test_monitor_grads_scenario_prints_one_line_per_finding_and_writes_the_diagnosis(tmp_path, generated, capsys):
    import monitor_grads
    from conftest import read_events

    data_dir = tmp_path / "data"
    from tools.data.synthetic import generate

    generate(data_dir)
    args = monitor_grads.get_args_parser().parse_args(["--scenario", "raw-pixels", "--logdir", str(tmp_path),
                                                      "--data-dir", str(data_dir), "--device", "cpu"])
    result = monitor_grads.main(args)
    out = capsys.readouterr().out
    assert result["verdict"] == "inputs-not-normalised" and result["detected"] == 1
    assert "inputs-not-normalised (since epoch 1) [inputs]" in out and out.count("Fix: scale to [0, 1]") == 1
    texts = [e.tensor_proto.string_val[0].decode() for e in read_events(result["run_dir"]).Tensors("diagnosis/text_summary")]
    assert texts[0].startswith("epoch 1: inputs-not-normalised\n\ninputs-not-normalised [inputs]")
    json.dumps(result)
    assert math.isfinite(result["verdicts"][0]["findings"][0]["first_epoch"])
