"""The course's lessons that print numbers, against the course's numbers and an independent computation; the
course's ResNet as a second model of train_rmb.py; the course's data pipeline, editable and trained with."""
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, train

from tools import basics_lab, loss_lab, lr_schedules, optim_lab, split_lab


def test_step_moves_the_course_weight_by_the_lr_and_zero_grad_zeroes_or_drops_the_gradient():
    r = optim_lab.step_and_zero_grad(seed=1)
    assert torch.allclose(r["before"], torch.tensor([[0.6614, 0.2669], [0.0617, 0.6213]]), atol=1e-4)  # the course's
    assert torch.allclose(r["after"], r["before"] - 0.1)  # lr 0.1 x gradient 1
    assert r["same_tensor"] and r["same_id"]
    assert torch.equal(r["grad_zeroed"], torch.zeros(2, 2)) and r["grad_default"] is None


def test_add_param_group_and_the_momentum_buffer_of_the_course(tmp_path):
    groups = optim_lab.param_groups(seed=1)
    assert [(g["lr"], g["shapes"]) for g in groups] == [(0.1, [(2, 2)]), (0.0001, [(3, 3)])]
    r = optim_lab.state_dict(seed=1, path=tmp_path / "state.pt")
    assert torch.allclose(r["buffer"], torch.full((2, 2), 6.5132), atol=1e-4)  # the course's 6.5132
    assert r["by_hand"] == pytest.approx(sum(0.9 ** k for k in range(10)))
    assert torch.equal(r["restored"], r["buffer"]) and r["keys"] == ["state", "param_groups"]


def test_the_scheduler_base_class_steps_once_per_epoch():
    rows = optim_lab.scheduler_basics()
    assert rows[0]["base_lrs"] == [0.1] and rows[0]["last_epoch"] == 0
    assert [r["last_epoch"] for r in rows] == list(range(8))
    assert [r["step_count"] for r in rows] == list(range(1, 9))  # the constructor's own step counts
    assert [r["lr"][0] for r in rows] == pytest.approx([0.1 * 0.1 ** (e // 3) for e in range(8)])


def test_defaults_are_what_a_param_group_added_later_inherits():
    defaults = optim_lab.optimizer_defaults()
    assert defaults["lr"] == 0.1 and defaults["momentum"] == 0.9
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], **{k: defaults[k] for k in ("lr", "momentum")})
    optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)]})
    assert optimizer.param_groups[1]["momentum"] == 0.9 and optimizer.param_groups[1]["lr"] == 0.1


def test_lbfgs_step_takes_a_closure_that_it_calls_more_than_once():
    rows = optim_lab.lbfgs_closure()["rows"]
    assert rows[0]["loss"] == 18.0  # sum((0 - 3)^2) for 2 values: the closure's first evaluation
    assert rows[0]["calls"] > 1  # LBFGS evaluates the loss again inside one step
    assert rows[-1]["w"] == pytest.approx([3.0, 3.0], abs=1e-6)


def test_rmsprop_fits_sin_as_the_course_does_and_its_log_is_seeded():
    """The course's problem and settings; its unseeded log runs from about 26215 (step 100) to 161 (step
    1000). Checked against an independent computation: the least-squares cubic (numpy, float64) is the
    best any fit can do, and RMSprop gets within a few times its residual."""
    import numpy as np

    first, again = optim_lab.rmsprop_fit(seed=1), optim_lab.rmsprop_fit(seed=1)
    assert first == again and [step for step, _ in first["log"]] == list(range(100, 1001, 100))
    x = np.linspace(-np.pi, np.pi, 2000)
    design = np.stack([np.ones_like(x), x, x ** 2, x ** 3], axis=1)
    coefficients, residual, *_ = np.linalg.lstsq(design, np.sin(x), rcond=None)
    losses = [loss for _, loss in first["log"]]
    assert losses[0] > 10 * losses[-1] and min(losses) >= residual[0] - 1e-9
    assert losses[-1] < 3 * residual[0]  # the least-squares residual is about 8.8
    assert first["bcd"][0] == pytest.approx(coefficients[1], abs=0.05)  # the x term, about 0.857


def test_autograd_worked_example_and_what_a_module_holds():
    r = basics_lab.autograd_example()
    assert r["out"] == 37.5 and r["grad"] == [9.0, 12.0] == r["by_hand"]
    held = basics_lab.what_a_module_holds()
    assert held["only_in_state_dict"] == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert list(held["named_parameters"]) == [n for n in held["state_dict"] if n not in held["only_in_state_dict"]]


def test_the_courses_graph_gives_its_gradients_and_frees_the_intermediate_ones():
    r = basics_lab.course_graph()
    assert r["y"] == 6.0 and r["grad"]["w"] == 5.0 == r["by_hand"]["w"] and r["grad"]["x"] == 2.0  # the course's 5
    assert r["is_leaf"] == {"w": True, "x": True, "a": False, "b": False, "y": False}
    assert r["grad"]["a"] == 2.0 and r["grad"]["b"] is None and r["grad"]["y"] is None  # a retained, b and y not


def test_optimizer_zero_grad_clears_only_what_it_holds_model_zero_grad_all():
    r = basics_lab.zero_grad_difference()
    assert r["before"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert r["after_optimizer"] == ["1.weight", "1.bias"] and r["after_model"] == []


def test_split_methods_cover_every_image_as_each_method_says():
    assert sorted(i for fold in split_lab.k_fold(23, 5, seed=0) for i in fold) == list(range(23))
    assert {len(f) for f in split_lab.k_fold(23, 5, seed=0)} == {4, 5}
    left_out = [len(split_lab.bootstrap(1000, seed)[1]) / 1000 for seed in range(20)]
    assert sum(left_out) / len(left_out) == pytest.approx((1 - 1 / 1000) ** 1000, abs=0.01)  # ~ 1/e = 36.8%
    loo = list(split_lab.leave_one_out(7))
    assert [v for _, v in loo] == list(range(7)) and all(len(t) == 6 and v not in t for t, v in loo)
    assert all(sorted(t) == [j for j in range(7) if j != v] for t, v in loo)


def test_leave_one_out_streams_its_splits():
    """10,000 images: the splits come one at a time, each in constant memory (all at once: 4.4 GB)."""
    import itertools
    import sys

    splits = split_lab.leave_one_out(10_000)
    first = list(itertools.islice(splits, 3))
    assert [v for _, v in first] == [0, 1, 2] and len(first[2][0]) == 9_999 and 2 not in first[2][0]
    assert sys.getsizeof(first[0][0]) < 1_000 and sum(1 for _ in splits) == 9_997


def test_split_lab_prints_each_method_on_a_folder(tiny_data, capsys):
    lines = split_lab.main(split_lab.get_args_parser().parse_args(["--data-dir", str(tiny_data), "--folds", "4"]))
    assert lines[0] == "24 images of classes ['1', '100']" and "train 20, valid 2, test 2" in lines[1]
    assert "every image validates exactly once: True" in lines[2] and lines[-1].startswith("leave-one-out: 24 splits")


def test_loss_lab_prints_the_courses_poisson_nll_and_the_plain_bce_with_logits():
    results = {r["loss"]: r["values"] for r in loss_lab.lab(seed=1)}
    poisson = results["PoissonNLLLoss, the course's: negative targets"]["none"]
    course = torch.tensor([[0.1570, 0.0258], [0.7866, 0.9590]])  # the course's printed values
    assert torch.allclose(torch.tensor(poisson), course, atol=1e-4)
    plain = results["BCEWithLogitsLoss: sigmoid and BCELoss in one"]
    for reduction in ("sum", "mean"):  # equals sigmoid + BCE, every reduction
        assert plain[reduction] == pytest.approx(results["BCELoss"][reduction])
    assert torch.allclose(torch.tensor(plain["none"]), torch.tensor(results["BCELoss"]["none"]))
    nll = results["NLLLoss on log_softmax(scores), as meant: CrossEntropyLoss"]
    assert nll["mean"] == pytest.approx(results["CrossEntropyLoss"]["mean"])
    assert nll["none"] == pytest.approx(results["CrossEntropyLoss"]["none"])


def test_the_courses_scheduler_settings_give_their_values():
    curves = lr_schedules.lr_curves(100, 0.1)
    multiplicative = curves["MultiplicativeLR"]
    assert [lr for _, lr in multiplicative["base"]][:21:10] == pytest.approx([0.1, 0.05, 0.025])  # x0.5 every 10
    assert [lr for _, lr in multiplicative["fc"]][:21:10] == pytest.approx([0.05, 0.04, 0.032])  # fc 0.05, x0.8
    plateau = [lr for _, lr in curves["ReduceLROnPlateau"]["base"]]
    assert plateau[11] == pytest.approx(0.1) and plateau[12] == pytest.approx(0.01)  # patience 10, no cooldown
    assert plateau[23] == pytest.approx(0.001)


@pytest.fixture(scope="module")
def resnet_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resnet")
    return tmp, train(tmp, tiny_data, "--model", "resnet18", "--epochs", "2", "--batch-size", "8")


def test_resnet_trains_with_the_monitor_pictures_and_a_checkpoint_inspect_run_rebuilds(resnet_run, tiny_data):
    from tools.inspect_run import get_args_parser, main

    tmp, metrics = resnet_run
    run_dir = Path(metrics["run_dir"])
    assert run_dir.name.endswith("_resnet18") and metrics["epochs"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["verdict"]["status"] in ("healthy", "converged")
    checkpoint = torch.load(run_dir / "checkpoint_best.pt", weights_only=True)
    assert checkpoint["model_class"] == "ResNet18" and checkpoint["args"]["model"] == "resnet18"
    pictures = {p.name for p in run_dir.glob("*.png")}
    assert {"gradcam.png", "feature_maps_layer4.png", "kernels_conv1.png"} <= pictures
    assert not any(name.startswith("kernels_layer") for name in pictures)  # 64x64 kernels: not drawn
    inspected = main(get_args_parser().parse_args([str(run_dir), "--out", str(tmp / "inspect"), "--device", "cpu"]))
    assert inspected["acc"] == pytest.approx(metrics["test_acc"])


def test_resnet_resumes_bit_for_bit_and_finetunes(resnet_run, tiny_data, tmp_path):
    tmp, metrics = resnet_run
    first = train(tmp_path / "a", tiny_data, "--model", "resnet18", "--epochs", "1", "--batch-size", "8")
    resumed = train(tmp_path / "a", tiny_data, "--epochs", "2", "--resume", "auto", "--run-name", "resnet18")
    assert Path(resumed["run_dir"]) == Path(first["run_dir"])
    a = torch.load(Path(resumed["run_dir"]) / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(Path(metrics["run_dir"]) / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)
    tuned = train(tmp_path / "b", tiny_data, "--model", "resnet18", "--epochs", "1", "--batch-size", "8",
                  "--finetune", str(Path(metrics["run_dir"]) / "checkpoint_best.pt"), "--freeze", "conv1,layer1")
    assert tuned["epochs"] == 1


def test_the_course_pipeline_trains_with_the_transforms_a_learner_edits(tiny_data, tmp_path, monkeypatch):
    from torchvision import transforms

    from tools.data import course_pipeline

    seen = []
    edited = course_pipeline.train_transform

    def with_a_flip(mean, std):  # a learner's edit: a horizontal flip before the course's transforms
        compose = edited(mean, std)
        flip = transforms.RandomHorizontalFlip(p=1.0)
        return transforms.Compose([transforms.Lambda(lambda img: seen.append(img.size) or flip(img)),
                                   *compose.transforms])

    monkeypatch.setattr(course_pipeline, "train_transform", with_a_flip)
    metrics = train(tmp_path, tiny_data, "--pipeline", "course", "--epochs", "1", "--batch-size", "4")
    assert len(seen) == 20 and metrics["epochs"] == 1  # every training image went through the edit


def test_the_course_pipeline_gives_the_fast_paths_images_but_for_the_resize(tiny_data):
    """The valid transforms of the course against the decoded images train_rmb.py trains on: the same
    normalised values, up to the difference of resizing once at decoding (a few levels of 255)."""
    from tools.data.course_pipeline import CourseDataset, valid_transform
    from tools.data.image_folder import IMAGENET_MEAN, IMAGENET_STD, load_splits
    from tools.training.batches import eval_batches

    data = load_splits(tiny_data, cache_dir=None)
    course = CourseDataset(data["valid"].samples, valid_transform(IMAGENET_MEAN, IMAGENET_STD))
    fast = torch.cat([images for images, _ in eval_batches(data, "valid", torch.device("cpu"))])
    ours = torch.stack([course[i][0] for i in range(len(course))])
    levels = ((ours - fast) * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).abs()
    assert levels.mean() < 6 and math.isfinite(levels.max().item())


def test_every_lab_command_runs(tmp_path, capsys):
    for module in (optim_lab, basics_lab):
        argv = ["--logdir", str(tmp_path)] if module is optim_lab else []
        module.main(module.get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert "weight after step:  [[0.5614, 0.1669], [-0.0383, 0.5213]]" in out and "x.grad [9.0, 12.0]" in out
    assert (ROOT / "tools" / "data" / "course_pipeline.py").is_file()


def test_the_courses_resnet_is_the_smaller_one_and_trains_like_resnet18(tiny_data, tmp_path):
    """--model resnet-course: ResNet-18's blocks, the last stage dropped, 16/32/64 channels; a run with
    the monitor, its pictures of its own last stage, a checkpoint inspect_run rebuilds by class name."""
    from model import CourseResNet, ResNet18
    from tools.inspect_run import get_args_parser, main

    course, resnet18 = CourseResNet(2), ResNet18(2)
    assert [m.out_channels for m in course.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)] \
        == [16] + [16] * 4 + [32] * 4 + [64] * 4  # the stem, then 2 blocks of 2 convs per stage
    assert sum(p.numel() for p in course.parameters()) < sum(p.numel() for p in resnet18.parameters()) / 50
    metrics = train(tmp_path, tiny_data, "--model", "resnet-course", "--epochs", "1", "--batch-size", "8")
    run_dir = Path(metrics["run_dir"])
    assert run_dir.name.endswith("_resnet-course")
    assert torch.load(run_dir / "checkpoint_best.pt", weights_only=True)["model_class"] == "CourseResNet"
    assert {"gradcam.png", "feature_maps_layer3.png"} <= {p.name for p in run_dir.glob("*.png")}
    assert not (run_dir / "feature_maps_layer4.png").exists()
    inspected = main(get_args_parser().parse_args([str(run_dir), "--out", str(tmp_path / "inspect"), "--device", "cpu"]))
    assert inspected["acc"] == pytest.approx(metrics["test_acc"])


def test_the_course_pipeline_keeps_the_fast_paths_promises(tiny_data, tmp_path, monkeypatch):
    """A photo deleted while a --pipeline course run trains costs no epoch: its decoded copy trains, with a
    warning; a 16-bit PNG becomes the same pixels as in the fast path (convert('RGB') alone clips it white)."""
    import shutil
    import warnings

    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from tools.data import course_pipeline
    from tools.data.decode import decode_resized

    data = tmp_path / "photos"
    shutil.copytree(tiny_data, data)
    built = course_pipeline.course_train_loader

    def deleting(*args, **kwargs):  # the loader is built, then a training photo disappears
        loader = built(*args, **kwargs)
        Path(loader.dataset.data_info[0][0]).unlink()
        return loader

    monkeypatch.setattr(course_pipeline, "course_train_loader", deleting)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(tmp_path, data, "--pipeline", "course", "--epochs", "2")
    assert metrics["epochs"] == 2 and any("cannot be read any more" in str(w.message) for w in caught)

    wide = np.linspace(0, 65535, 40 * 60, dtype=np.uint16).reshape(40, 60)
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    item, _ = course_pipeline.CourseDataset([(str(tmp_path / "deep.png"), 0)], transforms.Compose(
        [transforms.Resize((32, 32)), transforms.PILToTensor()]))[0]
    fast = decode_resized(str(tmp_path / "deep.png"))
    assert abs(item.float().mean().item() - 127.5) < 3 and (item.float() - fast.float()).abs().mean() < 3
