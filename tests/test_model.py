import math

import torch
from torch import nn

from model import LeNet, init_weights


def test_lenet_shapes_and_parameters():
    model = LeNet(classes=2)
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 2)
    names = [n for n, _ in model.named_parameters()]
    assert names == [f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")
                     for kind in ("weight", "bias")]
    assert LeNet(classes=5)(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_course_init_scheme():
    torch.manual_seed(0)
    model = LeNet().initialize_weights()
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0
    # linear weights: normal(0, 0.1); fc1 has 48,000 samples, so the std is within 1% of 0.1
    assert abs(model.fc1.weight.std().item() - 0.1) < 1e-3
    # conv weights: xavier_normal_, std = sqrt(2 / (fan_in + fan_out))
    fan_in, fan_out = 6 * 25, 16 * 25
    expected = math.sqrt(2 / (fan_in + fan_out))
    assert abs(model.conv2.weight.std().item() - expected) < 0.1 * expected


def test_batchnorm_and_kaiming_scheme():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 1000), nn.BatchNorm1d(1000))
    net[1].weight.data.fill_(3.0)
    init_weights(net, "kaiming")
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    assert abs(net[0].weight.std().item() - math.sqrt(2 / 1000)) < 1e-3


def test_default_scheme_keeps_pytorch_init():
    torch.manual_seed(0)
    a = LeNet()
    torch.manual_seed(0)
    b = LeNet().initialize_weights("default")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_each_scheme_sets_the_variance_it_promises():
    torch.manual_seed(0)
    fan_in = fan_out = 1000
    expected = {"xavier": math.sqrt(2.0) * math.sqrt(2 / (fan_in + fan_out)),  # ReLU gain
                "kaiming": math.sqrt(2 / fan_in), "normal": 1.0}
    for scheme, std in expected.items():
        layer = init_weights(nn.Sequential(nn.Linear(fan_in, fan_out)), scheme)[0]
        assert abs(layer.weight.std().item() - std) < 0.01 * std, scheme
        assert torch.count_nonzero(layer.bias) == 0


def test_train_rmb_init_flag_reaches_the_model(tiny_data, tmp_path, monkeypatch):
    from conftest import train

    from model import LeNet

    seen = []
    original = LeNet.initialize_weights
    monkeypatch.setattr(LeNet, "initialize_weights",
                        lambda self, scheme="course": seen.append(scheme) or original(self, scheme))
    train(tmp_path, tiny_data, "--epochs", "1", "--init", "kaiming", "--no-monitor")
    assert seen == ["kaiming"]
