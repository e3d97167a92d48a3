import json
from pathlib import Path

import pytest
import torch
from conftest import line, read_events
from PIL import Image

import monitor_grads
from tools.tb.writer import GRAD_NORM, LOSS, PICTURES
from model import ToyModel


def run(tmp_path, *flags):
    args = monitor_grads.get_args_parser().parse_args(["--logdir", str(tmp_path), "--device", "cpu", *flags])
    return monitor_grads.main(args)


def test_toy_experiment_prints_norms_every_10_samples_and_writes_the_charts(tmp_path, capsys):
    result = run(tmp_path)
    out = capsys.readouterr().out
    assert [r["samples"] for r in result["reports"]] == [10, 20, 30, 40]
    assert out.count("gradient L2 norms (forward order):") == 4
    run_dir = Path(result["run_dir"])
    for name in ("grad_histograms.png", "gradient_flow.png"):
        with Image.open(run_dir / name) as img:
            assert img.size[0] > 400
    events = read_events(run_dir)  # one unit everywhere: the samples seen
    assert [e.step for e in line(run_dir, GRAD_NORM, "conv1")] == [10, 20, 30, 40]
    assert [e.value for e in line(run_dir, LOSS, "train")] == pytest.approx([r["loss"] for r in result["reports"]])
    assert len(events.Histograms("grads/fc.weight")) == 4
    assert events.Tags()["images"] == [f"{PICTURES}/gradient_flow"]
    texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("diagnosis/text_summary")]
    assert [t.split(":")[0] for t in texts] == ["samples 10", "samples 20", "samples 30", "samples 40"]
    report = json.loads((run_dir / "grad_report.json").read_text())
    assert list(report[0]["norms"]) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight"]


# The course's first print (ToyModel, torch.manual_seed(0), 40 random images, a plain loss.backward() per
# sample, printed after 10 samples), published in the course's notes.
COURSE_FIRST_NORMS = {"conv1.weight": 0.1473149, "conv1.bias": 0.1671383, "conv2.weight": 0.9203198,
                      "conv2.bias": 0.5442096, "fc.weight": 1.7258217}


def test_the_first_print_is_the_courses_published_norms(tmp_path, capsys):
    result = run(tmp_path)  # the defaults
    norms = result["reports"][0]["norms"]
    assert list(norms) == list(COURSE_FIRST_NORMS)
    for name, published in COURSE_FIRST_NORMS.items():
        assert f"{norms[name]:.5g}" == f"{published:.5g}", name  # 5 significant digits
    assert "conv1.weight  1.4731e-01" in capsys.readouterr().out


def test_first_printed_norms_are_the_course_experiment(tmp_path):
    """Recompute the first group independently: seed 0, ToyModel, 40 random images, 10 accumulated."""
    result = run(tmp_path, "--samples", "10")
    torch.manual_seed(0)
    model = ToyModel()
    inputs, labels = torch.randn(10, 3, 224, 224), torch.randint(0, 2, (10,))
    for i in range(10):
        torch.nn.functional.cross_entropy(model(inputs[i:i + 1]), labels[i:i + 1]).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:  # the course's unused `tmp` conv gets none
            assert result["reports"][0]["norms"][name] == pytest.approx(p.grad.norm().item(), rel=1e-4)
    assert model.tmp.weight.grad is None and "tmp.weight" not in result["reports"][0]["norms"]


@pytest.mark.parametrize("scenario", ["vanishing", "exploding", "saturated"])
def test_gradient_scenarios_name_their_problem_from_the_first_epoch(scenario, tmp_path, tiny_data, capsys):
    result = run(tmp_path, "--scenario", scenario, "--data-dir", str(tiny_data), "--cache-dir", str(tmp_path / "c"))
    assert result["verdict"] == scenario and result["detected"] == 1
    assert f"final verdict: {scenario}" in capsys.readouterr().out


def test_scenario_list_names_every_scenario(tmp_path, capsys):
    from tools.suites.scenarios import SCENARIOS

    result = run(tmp_path, "--scenario", "list")
    out = capsys.readouterr().out
    assert result["scenarios"] == [s.name for s in SCENARIOS] and all(s.name in out for s in SCENARIOS)


def test_lenet_on_rmb_data(tmp_path, tiny_data):
    result = run(tmp_path, "--model", "lenet", "--data-dir", str(tiny_data), "--samples", "20",
                 "--cache-dir", str(tmp_path / "cache"))
    assert len(result["reports"]) == 2 and result["verdict"] in ("healthy", "converged")
