import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from model import LeNet, mlp_classifier
from tools.monitor.activations import activation_stats
from tools.monitor.hooks import forward_order
from tools.monitor import TrainingMonitor
from tools.monitor.tensor_stats import grad_flow, grad_norms, histograms, histograms_in_one_pass, unwrap
from tools.monitor.verdict import diagnose


def lenet_with_grads(seed=0):
    torch.manual_seed(seed)
    model = LeNet().initialize_weights()
    nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 2, (8,))).backward()
    return model


def test_grad_norms_equal_linalg_per_parameter():
    model = lenet_with_grads()
    norms = grad_norms(model)
    assert list(norms) == [n for n, _ in model.named_parameters()]
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(torch.linalg.vector_norm(p.grad).item(), rel=1e-6)


def test_histograms_equal_numpy_on_the_same_edges():
    torch.manual_seed(0)
    tensors = [torch.randn(10_000) * 3 + 1, torch.rand(50, 40), torch.full((7,), 2.5), torch.randn(3, 3, 5, 5)]
    for tensor, hist in zip(tensors, histograms(tensors, bins=64)):
        x = tensor.double().numpy().ravel()
        assert hist.num == x.size and sum(hist.bucket_counts) == x.size
        counts, _ = np.histogram(x, bins=np.array(hist.edges))
        assert np.array_equal(np.array(hist.bucket_counts), counts)
        assert hist.sum == pytest.approx(x.sum(), rel=1e-5, abs=1e-6)
        assert hist.sum_squares == pytest.approx((x * x).sum(), rel=1e-5)
        assert hist.min <= x.min() and hist.max >= x.max()


def test_nan_and_inf_are_counted_not_binned():
    x = torch.randn(1000)
    x[[3, 10]] = float("nan")
    x[7] = float("inf")
    hist = histograms([x])[0]
    assert (hist.nan, hist.inf, hist.num) == (2, 1, 997)
    finite = x[torch.isfinite(x)].numpy()
    counts, _ = np.histogram(finite, bins=np.array(hist.edges))
    assert np.array_equal(np.array(hist.bucket_counts), counts)
    assert histograms([torch.full((4,), float("nan"))])[0].num == 0


def test_one_pass_histograms_the_gpu_path_equal_numpy_on_a_cpu_too():
    torch.manual_seed(0)
    with_bad = torch.randn(1000)
    with_bad[[3, 10]], with_bad[7] = float("nan"), float("-inf")
    tensors = [torch.randn(10_000) * 3 + 1, torch.rand(2000), torch.full((7,), 2.5), torch.zeros(0),
               torch.full((4,), float("nan")), with_bad]
    for tensor, hist in zip(tensors, histograms_in_one_pass(tensors, bins=64)):
        x = tensor.double().numpy()
        finite = x[np.isfinite(x)]
        assert (hist.num, hist.nan, hist.inf) == (finite.size, np.isnan(x).sum(), np.isinf(x).sum())
        counts, _ = np.histogram(finite, bins=np.array(hist.edges))
        assert sum(hist.bucket_counts) == finite.size
        assert np.abs(np.array(hist.bucket_counts) - counts).sum() <= 2  # float32 bins: rounding at an edge
        assert hist.sum == pytest.approx(finite.sum(), rel=1e-5, abs=1e-6)
        assert hist.sum_squares == pytest.approx((finite * finite).sum(), rel=1e-5, abs=1e-6)
        if finite.size:  # [min, max] of the finite values; a constant gets a range of 1 around it
            spread = finite.max() > finite.min()
            assert (hist.min, hist.max) == ((finite.min(), finite.max()) if spread
                                            else (finite.min() - 0.5, finite.max() + 0.5))


def test_small_tensors_in_groups_big_ones_alone_give_the_same_histograms(monkeypatch):
    import tools.monitor.tensor_stats

    monkeypatch.setattr(tools.monitor.tensor_stats, "ONE_PASS_TENSOR", 1000)  # tensors over 1000 values: one by one
    monkeypatch.setattr(tools.monitor.tensor_stats, "ONE_PASS_GROUP", 600)    # groups of at most 600 values
    torch.manual_seed(0)
    tensors = [torch.randn(n) for n in (10, 5000, 300, 400, 1200, 5, 250)]
    grouped = histograms(tensors, one_pass=True)
    for tensor, hist, alone in zip(tensors, grouped, histograms(tensors, one_pass=False)):
        assert (hist.num, hist.min, hist.max) == (tensor.numel(), alone.min, alone.max)
        assert np.abs(np.array(hist.bucket_counts) - np.array(alone.bucket_counts)).sum() <= 2


def test_nan_gradient_is_named_without_a_crash(tmp_path):
    from tools.tb.writer import open_writer

    model = lenet_with_grads()
    model.fc1.weight.grad[0, 0] = float("nan")
    model.conv2.weight.grad[0, 0, 0, 0] = float("inf")
    writer = open_writer(tmp_path)
    monitor = TrainingMonitor(model, writer)
    monitor.set_forward_order(torch.randn(1, 3, 32, 32))
    monitor.after_backward(7, torch.tensor(0.5))
    assert monitor.nonfinite[0] == 7 and "conv2.weight" in monitor.nonfinite[1]  # conv2 runs before fc1
    hists = monitor.log_histograms(7)
    assert hists["grads/fc1.weight"].nan == 1 and hists["grads/conv2.weight"].inf == 1
    verdict = monitor.end_epoch(7, 0.5)
    assert verdict.status == "non-finite" and verdict.findings[0].where == "conv2.weight"
    writer.close()


def test_forward_order_follows_the_forward_pass_not_registration():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(4, 2)
            self.first = nn.Linear(3, 4)

        def forward(self, x):
            return self.second(self.first(x))

    assert forward_order(Backwards(), torch.randn(1, 3)) == ["first.weight", "first.bias", "second.weight",
                                                             "second.bias"]


def test_update_ratio_equals_the_norm_of_the_change_over_the_norm_of_the_weights():
    model = lenet_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    monitor = TrainingMonitor(model, log_interval=1)
    monitor.after_backward(1, torch.tensor(0.7))
    optimizer.step()
    monitor.after_step(1)
    for name, p in model.named_parameters():
        change = torch.linalg.vector_norm(p.detach() - before[name])
        expected = (change / torch.linalg.vector_norm(before[name]).clamp_min(1e-12)).item()
        assert monitor.grads.ratio_sum[monitor.names.index(name)] == pytest.approx(expected, rel=1e-5)


def test_activation_stats_match_a_direct_computation_and_hooks_are_removed():
    torch.manual_seed(0)
    model = LeNet()
    model.fc2.bias.data.fill_(-100.0)  # every unit of relu4 is dead
    x = torch.randn(16, 3, 32, 32)
    with activation_stats(model) as acts:
        model(x)
    stats = acts.result()
    assert stats["relu4"]["dead"] == 1.0
    conv1 = model.conv1(x)
    assert stats["conv1"]["mean"] == pytest.approx(conv1.mean().item(), rel=1e-4)
    assert stats["conv1"]["std"] == pytest.approx(conv1.std(unbiased=False).item(), rel=1e-4)
    relu1 = torch.relu(conv1)
    alive_channels = [bool((relu1[:, c] > 0).any()) for c in range(relu1.shape[1])]
    assert stats["relu1"]["dead"] == pytest.approx(1 - sum(alive_channels) / len(alive_channels))
    model.conv2.bias.data.fill_(-100.0)  # every channel of relu2 is dead, whatever the input
    with activation_stats(model) as acts:
        model(x)
    assert acts.result()["relu2"]["dead"] == 1.0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(RuntimeError):
        with activation_stats(model):
            model(torch.randn(1, 1, 32, 32))  # wrong channels: the hooks must go anyway
    assert all(not m._forward_hooks for m in model.modules())
    assert diagnose({}, 0.6, 2, activations=stats).status == "dead-relu"


def test_verdict_vanishing_for_a_deep_sigmoid_net_at_init():
    torch.manual_seed(0)
    model = mlp_classifier(20, 64, "sigmoid")
    loss = nn.functional.cross_entropy(model(torch.randn(32, 64)), torch.randint(0, 2, (32,)))
    loss.backward()
    monitor = TrainingMonitor(model)
    monitor.after_backward(1, loss)
    verdict = monitor.end_epoch(1, loss.item())
    assert verdict.status == "vanishing", verdict


def test_verdict_for_lenet_on_rmb_data_is_not_vanishing(tiny_data, tmp_path):
    from conftest import read_events, train

    metrics = train(tmp_path, tiny_data, "--epochs", "3", "--batch-size", "4")
    events = read_events(metrics["run_dir"])
    texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("diagnosis/text_summary")]
    assert len(texts) == 3
    assert all(("healthy" in t or "converged" in t) and "vanishing" not in t for t in texts), texts


def test_verdict_exploding_for_a_diverging_run():
    torch.manual_seed(0)
    model = LeNet().initialize_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=100.0, momentum=0.9)  # train_rmb.py --lr 100
    monitor = TrainingMonitor(model)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))
    verdicts = []
    for step in range(1, 30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        monitor.after_backward(step, loss)
        verdicts.append(monitor.end_epoch(step, loss.item()).status)
        if monitor.nonfinite:
            break
        optimizer.step()
    assert verdicts[:2] == ["healthy", "exploding"]  # the next step's gradient is 1e9x the first


def test_converged_and_learning_rate_verdicts():
    norms = {"a.weight": 1e-4, "b.weight": 2e-4}
    assert diagnose(norms, 0.01, 2).status == "converged"
    assert diagnose(norms, 0.6, 2).status == "healthy"
    assert diagnose(norms, 0.6, 2, update_ratios={"a.weight": 1e-7, "b.weight": 1e-7}).status == "lr-too-low"
    assert diagnose(norms, 0.6, 2, update_ratios={"a.weight": 0.5, "b.weight": 0.5}).status == "lr-too-high"
    assert diagnose({"a.weight": 1e-9, "b.weight": 1.0}, 0.01, 2).status == "converged"  # small: loss is low
    assert diagnose(norms, float("nan"), 2).status == "non-finite"


def test_grad_flow_is_mean_and_max_abs():
    model = lenet_with_grads()
    flow = grad_flow(model)
    assert list(flow) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    g = model.fc1.weight.grad
    assert flow["fc1.weight"] == pytest.approx((g.abs().mean().item(), g.abs().max().item()), rel=1e-5)


def test_names_of_a_ddp_wrapped_model_come_out_unwrapped(tmp_path):
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = LeNet()
        ddp = nn.parallel.DistributedDataParallel(model)
        nn.functional.cross_entropy(ddp(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1])).backward()
        assert unwrap(ddp) is model
        assert list(grad_norms(ddp)) == [n for n, _ in model.named_parameters()]
        monitor = TrainingMonitor(ddp)
        assert monitor.names[0] == "conv1.weight"
        assert "weights/conv1.weight" in monitor.log_histograms(1)
    finally:
        dist.destroy_process_group()


def test_an_epoch_shorter_than_the_log_interval_still_measures_the_update_ratio():
    torch.manual_seed(0)
    model = LeNet().initialize_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-12)  # a learning rate far too low
    monitor = TrainingMonitor(model, log_interval=10)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 2, (16,))
    verdicts = []
    for epoch in range(3):  # epochs of 3 steps: never a logging step
        for step in range(epoch * 3 + 1, epoch * 3 + 4):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            monitor.after_backward(step, loss)
            optimizer.step()
            monitor.after_step(step)
        verdicts.append(monitor.end_epoch(step, loss.item()).status)
    assert verdicts == ["lr-too-low"] * 3  # "healthy" three epochs running before
