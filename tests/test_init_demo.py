import json
import math
from pathlib import Path

import pytest
from conftest import read_events
from PIL import Image

import init_demo


def run(tmp_path, *flags):
    return init_demo.main(init_demo.get_args_parser().parse_args(["--logdir", str(tmp_path), "--device", "cpu",
                                                                  *flags]))


@pytest.fixture(scope="module")
def all_modes(tmp_path_factory):
    return run(tmp_path_factory.mktemp("init"))


def test_each_mode_behaves_as_the_course_teaches(all_modes):
    stats = all_modes["stats"]
    normal = stats["normal"]
    assert None in normal and normal.index(None) < 40  # NaN/Inf before layer 40
    assert normal[0] == pytest.approx(15.96, abs=0.01)  # the course's published first value, seed 1
    assert 0.5 <= stats["normal-scaled"][99] <= 2
    assert stats["tanh"][99] < 0.15
    for mode in ("tanh-xavier", "tanh-xavier-torch"):
        assert 0.5 <= stats[mode][99] <= 0.8
    for mode in ("relu-kaiming", "relu-kaiming-torch"):
        assert 0.3 <= stats[mode][99] <= 1.5
    assert stats["relu-normal-scaled"][99] < 1e-6
    assert abs(stats["gain"]["empirical"] - 5 / 3) < 0.1 and stats["gain"]["calculate_gain"] == pytest.approx(5 / 3)
    # the seeded draw (seed 1): 1.5983 (the course's unseeded one printed 1.5827), computed again here
    import torch

    torch.manual_seed(1)
    x = torch.randn(10000).double()
    assert stats["gain"]["empirical"] == pytest.approx((x.std() / torch.tanh(x).std()).item(), abs=1e-4)
    assert round(stats["gain"]["empirical"], 4) in (1.5982, 1.5983, 1.5984)
    assert all_modes["verdicts"] == {"normal": "explodes", "normal-scaled": "steady", "tanh": "vanishes",
                                     "tanh-xavier": "steady", "tanh-xavier-torch": "steady",
                                     "relu-normal-scaled": "vanishes", "relu-kaiming": "steady",
                                     "relu-kaiming-torch": "steady"}


def test_outputs_json_png_and_tensorboard(all_modes):
    run_dir = Path(all_modes["run_dir"])
    saved = json.loads((run_dir / "init_stats.json").read_text())
    assert len(saved["tanh"]) == 100 and saved["normal"][-1] is None
    with Image.open(run_dir / "activation_std.png") as img:
        assert img.size[0] > 400
    tanh = read_events(run_dir / "tanh")
    assert [e.step for e in tanh.Scalars("activation_std")] == list(range(1, 101))
    assert [e.value for e in tanh.Scalars("activation_std")] == pytest.approx(saved["tanh"], rel=1e-6)
    assert [h.step for h in tanh.Histograms("activations/tanh")] == [1, 10, 50, 100]
    assert [e.value for e in tanh.Scalars("activation_std_log10")] == pytest.approx([math.log10(v) for v in saved["tanh"]],
                                                                                  rel=1e-6)
    vanished = [e.value for e in read_events(run_dir / "relu-normal-scaled").Scalars("grad_norm")]
    steady = [e.value for e in read_events(run_dir / "relu-kaiming").Scalars("grad_norm")]
    assert len(vanished) == len(steady) == 100
    assert max(vanished) < 1e-10 and all(0.1 < g < 10 for g in steady)
    assert saved["grad_norms"]["normal"][0] is None  # the first layer's gradient overflows
    assert len(read_events(run_dir / "normal").Scalars("activation_std")) == 31


def test_the_std_1_init_gives_the_courses_last_finite_std_and_overflows_after(all_modes):
    """The activations stay finite through layer 31 (float32's std() of them overflows, not they), whose
    std is the course's last printed one, 2.0786820e+37; layer 32's overflow float32."""
    normal = all_modes["stats"]["normal"]
    assert normal[30] == pytest.approx(2.0786820e37, rel=1e-6) and normal[31] is None


def test_all_layers_are_printed_on_request(tmp_path, capsys):
    run(tmp_path, "--mode", "tanh", "--all-layers")
    words = [line.split() for line in capsys.readouterr().out.splitlines()]
    rows = [w for w in words if w and w[0].isdigit()]
    saved = json.loads(next(tmp_path.glob("*_init/init_stats.json")).read_text())["tanh"]
    assert [int(r[0]) for r in rows] == list(range(1, 101))
    assert [float(r[1]) for r in rows] == pytest.approx(saved, rel=1e-3)  # printed at 4 significant digits


def test_same_seed_same_json_and_one_mode_alone_matches_all(all_modes, tmp_path):
    again = run(tmp_path / "again")
    assert (Path(again["run_dir"]) / "init_stats.json").read_text() == \
        (Path(all_modes["run_dir"]) / "init_stats.json").read_text()
    alone = run(tmp_path / "alone", "--mode", "relu-kaiming")
    assert alone["stats"]["relu-kaiming"] == all_modes["stats"]["relu-kaiming"]
    assert set(alone["stats"]) == {"relu-kaiming", "grad_norms"}


def test_manual_and_torch_inits_agree(all_modes):
    stats = all_modes["stats"]
    assert stats["tanh-xavier"] == pytest.approx(stats["tanh-xavier-torch"], rel=1e-5)
    assert stats["relu-kaiming"] == pytest.approx(stats["relu-kaiming-torch"], rel=1e-5)
    assert not any(math.isnan(v) for v in stats["tanh"])
