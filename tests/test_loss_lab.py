"""The loss lab reproduces the course's published numbers, and every by-hand check equals PyTorch's value."""
import pytest
from conftest import read_events
from PIL import Image

from tools import loss_lab


def test_cross_entropy_is_the_courses_published_numbers():
    plain, weighted = loss_lab.cross_entropy()
    assert plain["values"]["none"] == pytest.approx([1.3133, 0.1269, 0.1269], abs=5e-5)
    assert plain["values"]["sum"] == pytest.approx(1.5671, abs=5e-5)
    assert plain["values"]["mean"] == pytest.approx(0.5224, abs=5e-5)
    assert weighted["values"]["none"] == pytest.approx([1.3133, 0.2539, 0.2539], abs=5e-5)
    assert weighted["values"]["sum"] == pytest.approx(1.8210, abs=5e-5)
    assert weighted["values"]["mean"] == pytest.approx(0.3642, abs=5e-5)


@pytest.mark.parametrize("result", loss_lab.lab(), ids=lambda r: r["loss"])
def test_every_check_by_hand_equals_pytorch(result):
    assert result["by_hand"], "every loss is checked by hand"
    for key, value in result["by_hand"].items():
        assert loss_lab.picked(result["values"], key) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_the_lab_prints_every_loss_and_draws_smooth_l1_against_l1(tmp_path, capsys):
    result = loss_lab.main(loss_lab.get_args_parser().parse_args(["--logdir", str(tmp_path)]))
    out = capsys.readouterr().out
    for name in ("CrossEntropyLoss", "NLLLoss", "BCELoss", "BCEWithLogitsLoss", "L1Loss", "MSELoss", "SmoothL1Loss",
                 "PoissonNLLLoss", "KLDivLoss", "MarginRankingLoss", "TripletMarginLoss", "CosineEmbeddingLoss"):
        assert f"\n{name}" in "\n" + out, name
    with Image.open(f"{result['run_dir']}/smooth_l1.png") as img:
        assert img.size[0] >= 500
    smooth = read_events(f"{result['run_dir']}/smooth_l1_vs_l1_SmoothL1").Scalars("smooth_l1_vs_l1")
    assert len(smooth) == 61 and smooth[30].value == pytest.approx(0.0) and smooth[0].value == pytest.approx(2.5)
