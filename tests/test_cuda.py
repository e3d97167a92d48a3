"""The CUDA paths: the monitor on GPU tensors, and every script with --device cuda. Skipped without CUDA
(CI has none); run them on a GPU machine with `python -m pytest tests/test_cuda.py`."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, read_events, train
from torch import nn

from model import LeNet
from tools.monitor import TrainingMonitor
from tools.tb.writer import GRAD_NORM
from tools.monitor.tensor_stats import grad_flow, grad_norms, histograms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


def lenet_with_grads_on_cuda():
    torch.manual_seed(0)
    model = LeNet().initialize_weights().cuda()
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 2, (8,), device="cuda")
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return model, loss


def synchronizations(fn) -> int:
    """How many times fn() made the host wait for the GPU (CUDA's sync debug mode warns at each)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_norms_and_histograms_of_gpu_tensors_match_independent_cpu_computations():
    model, _ = lenet_with_grads_on_cuda()
    norms = grad_norms(model)
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(torch.linalg.vector_norm(p.grad.cpu().double()).item(), rel=1e-5)
    big = torch.randn(100_000, device="cuda") * 3 + 1  # histogrammed on its own, the others together
    tensors = [p.detach() for p in model.parameters()] + [big, torch.full((5,), float("nan"), device="cuda")]
    for tensor, hist in zip(tensors, histograms(tensors)):
        x = tensor.cpu().double().numpy().ravel()
        x = x[np.isfinite(x)]
        counts, _ = np.histogram(x, bins=np.array(hist.edges))
        assert hist.num == x.size == sum(hist.bucket_counts)
        # a value within float32 rounding of an edge may fall on either side: allow one such per edge
        assert np.abs(np.array(hist.bucket_counts) - counts).sum() <= 2 * len(counts)
        assert hist.sum == pytest.approx(x.sum(), rel=1e-4, abs=1e-5)


def test_nan_on_gpu_is_counted_and_named():
    model, loss = lenet_with_grads_on_cuda()
    model.fc2.weight.grad[0, 0] = float("nan")
    monitor = TrainingMonitor(model)
    monitor.after_backward(1, loss)
    assert monitor.nonfinite[0] == 1 and "fc2.weight" in monitor.nonfinite[1]
    hist = monitor.log_histograms(1)["grads/fc2.weight"]
    assert (hist.nan, hist.num) == (1, model.fc2.weight.numel() - 1)


def test_the_monitor_waits_for_the_gpu_once_per_step_and_once_per_epoch():
    model, loss = lenet_with_grads_on_cuda()
    monitor = TrainingMonitor(model, log_interval=1)
    assert synchronizations(lambda: monitor.after_backward(1, loss)) == 1  # loss and all norms in one copy
    monitor.log_histograms(1)  # the first call copies the tensors' sizes to the GPU, once
    assert synchronizations(lambda: monitor.log_histograms(1)) == 1  # LeNet's 20 tensors in one pass
    assert synchronizations(lambda: grad_flow(model)) == 1
    params = list(model.parameters())
    assert synchronizations(lambda: [p.grad.norm().item() for p in params]) == len(params)  # the usual way


def test_train_rmb_on_cuda_resumes_bit_identical_and_loads_on_cpu(tiny_data, tmp_path):
    flags = ("--epochs", "2", "--batch-size", "4", "--device", "cuda")
    straight = train(tmp_path / "straight", tiny_data, *flags)
    first = train(tmp_path / "resumed", tiny_data, *flags[:1], "1", *flags[2:])
    resumed = train(tmp_path / "resumed", tiny_data, *flags, "--resume", "auto")
    assert resumed["run_dir"] == first["run_dir"]
    a = torch.load(Path(straight["run_dir"]) / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    b = torch.load(Path(resumed["run_dir"]) / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    for key, tensor in a["model"].items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, b["model"][key]), key
    assert straight["valid_acc"] == resumed["valid_acc"]
    tags = read_events(straight["run_dir"]).Tags()
    assert "weights/conv1.weight" in tags["histograms"]
    assert f"{GRAD_NORM}/total" in read_events(Path(straight["run_dir"])).Tags()["scalars"]


def test_inspect_run_on_cuda(tiny_data, tmp_path):
    from tools import inspect_run

    metrics = train(tmp_path, tiny_data, "--epochs", "1", "--batch-size", "4", "--device", "cuda")
    args = inspect_run.get_args_parser().parse_args([metrics["run_dir"], "--device", "cuda"])
    result = inspect_run.main(args)
    assert all(Path(p).is_file() for p in result["pngs"])


def test_monitor_grads_and_init_demo_on_cuda(tmp_path):
    import init_demo
    import monitor_grads

    grads = monitor_grads.main(monitor_grads.get_args_parser().parse_args(
        ["--logdir", str(tmp_path), "--device", "cuda", "--scenario", "vanishing"]))
    assert grads["verdict"] == "vanishing"
    init = init_demo.main(init_demo.get_args_parser().parse_args(["--logdir", str(tmp_path), "--device", "cuda"]))
    assert init["verdicts"]["relu-kaiming"] == "steady" and init["verdicts"]["normal"] == "explodes"


def test_torchrun_with_nccl_on_one_gpu(tiny_data, tmp_path):
    logdir = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_rmb.py",
           "--data-dir", str(tiny_data), "--epochs", "2", "--batch-size", "4", "--logdir", str(logdir),
           "--cache-dir", str(tmp_path / "cache"), "--device", "cuda"]
    result = subprocess.run(cmd, cwd=ROOT, env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next(logdir.iterdir())
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
