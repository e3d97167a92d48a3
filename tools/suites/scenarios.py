"""A labelled suite of broken training runs, and healthy ones beside them: what the verdict is measured on.

Each scenario is a short run that shows one problem the way a user meets it (LeNet on the RMB data at a
tiny learning rate, a loop without zero_grad, a softmax before CrossEntropyLoss, ...), in a plain
training loop of the kind a learner writes, with the monitor in it. `expected` is the finding the
verdict should name first ('healthy' for the healthy runs: healthy or converged, with no problem).

    python monitor_grads.py --scenario lr-too-low        # one scenario, its verdict every epoch
    python bench/bench_diagnosis.py                       # all of them: detection, root cause, false alarms
"""
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from model import LeNet, init_weights, mlp_classifier
from tools.monitor import TrainingMonitor
from tools.monitor.activations import DIAGNOSED, activation_stats
from tools.training.batches import DeviceBatches
from tools.training.engine import evaluate


@dataclass(frozen=True)
class Scenario:
    """name; expected: the finding named first ('healthy': healthy or converged, no problem); story: what
    the user did; evidence_epoch: the first epoch where the problem's evidence exists; settings: the run."""
    name: str
    expected: str
    story: str
    epochs: int = 3
    evidence_epoch: int = 1
    settings: dict = field(default_factory=dict)


SCENARIOS = [
    Scenario("healthy", "healthy", "LeNet, SGD lr 0.01 momentum 0.9 (train_rmb.py's defaults)", 20),
    Scenario("healthy-seed1", "healthy", "the same, seed 1", 20, settings={"seed": 1}),
    Scenario("healthy-seed2", "healthy", "the same, seed 2", 20, settings={"seed": 2}),
    Scenario("healthy-adam", "healthy", "LeNet, Adam lr 1e-3", 20, settings={"optimizer": "adam", "lr": 1e-3}),
    Scenario("healthy-dropout", "healthy", "LeNet with dropout 0.3, validated with eval() and no_grad()", 20,
             settings={"dropout": 0.3}),
    Scenario("healthy-frozen", "healthy", "conv1 frozen on purpose (finetuning), and said so", 20,
             settings={"freeze": "conv1", "declare_frozen": True}),
    Scenario("lr-too-low", "lr-too-low", "SGD at lr 1e-7: nothing moves", 3, settings={"lr": 1e-7}),
    Scenario("lr-too-high", "lr-too-high", "SGD at lr 1.0 with momentum 0.9", 3, settings={"lr": 1.0}),
    Scenario("weight-decay", "weight-decay-too-high", "SGD with weight_decay 1.0 (meant 1e-4)", 3,
             settings={"weight_decay": 1.0}),
    Scenario("no-zero-grad", "gradients-accumulate", "optimizer.zero_grad() forgotten", 3,
             settings={"zero_grad": False}),
    Scenario("eval-missing", "eval-in-train-mode", "a dropout LeNet validated without model.eval()", 3,
             settings={"dropout": 0.5, "valid_eval": False}),
    Scenario("train-missing", "train-in-eval-mode", "a dropout LeNet whose mid-epoch validation calls model.eval(), "
             "and model.train() only once, before the loop (the course's misplaced net.train())", 3,
             settings={"dropout": 0.5, "eval_mid_epoch": True}),
    Scenario("no-grad-missing", "eval-with-autograd", "validation without torch.no_grad()", 3,
             settings={"valid_no_grad": False}),
    Scenario("softmax-before-loss", "softmax-before-loss", "a softmax at the end of the model, then CrossEntropyLoss",
             3, settings={"softmax": True}),
    Scenario("raw-pixels", "inputs-not-normalised", "pixels fed as 0-255 floats, not normalised", 3,
             settings={"raw_pixels": True}),
    Scenario("frozen-by-mistake", "unchanged-weights", "conv1.requires_grad_(False) left over from a finetune", 3,
             settings={"freeze": "conv1"}),
    Scenario("not-in-optimizer", "unchanged-weights", "the optimizer built over the fc layers only", 3,
             settings={"optimize": "fc"}),
    Scenario("zero-lr-group", "unchanged-weights", "the conv layers in a parameter group with lr 0", 3,
             settings={"conv_lr": 0.0}),
    Scenario("data-leak", "data-leak", "half the valid images copied from train", 3, settings={"leak": True}),
    Scenario("class-missing", "class-missing", "no 100-yuan image in the valid split", 3,
             settings={"drop_valid_class": 1}),
    Scenario("nan-input", "non-finite", "one image normalised with a zero std: NaN in a batch", 3,
             settings={"nan_input": True}),
    Scenario("exploding", "exploding", "a 12-layer ReLU MLP initialised with std 1 (the course's naive init)", 3,
             settings={"model": "mlp-relu", "init": "normal", "lr": 1e-3}),
    Scenario("vanishing", "vanishing", "a 20-layer sigmoid MLP", 3, settings={"model": "mlp-sigmoid"}),
    Scenario("saturated", "saturated", "a tanh MLP initialised with std 1: every unit pinned at +-1", 3,
             settings={"model": "mlp-tanh", "init": "normal"}),
    Scenario("dead-relu", "dead-relu", "LeNet whose fc biases start at -10", 3, settings={"bias": -10.0}),
    Scenario("overfitting", "overfitting", "30 epochs on 12 training images, without augmentation", 30, 17,
             settings={"train_images": 12, "augment": False}),
    Scenario("plateau", "plateau", "labels that do not match the images (a shuffled label list)", 8, 5,
             settings={"shuffle_labels": True}),
]
BY_NAME = {s.name: s for s in SCENARIOS}
HEALTHY = ("healthy", "converged")


def scenario_data(data: dict, settings: dict, seed: int) -> dict:
    """The scenario's splits: `load_splits`' data with the scenario's changes to them (a leak, a class
    dropped from valid, a few train images only, NaN from a zero std). Splits: `Split`s."""
    train, valid = Split(data["train"].images, data["train"].targets), Split(data["valid"].images, data["valid"].targets)
    generator = torch.Generator().manual_seed(seed)
    if settings.get("train_images"):
        keep = torch.randperm(len(train), generator=generator)[:settings["train_images"]]
        train = Split(train.images[keep], [train.targets[i] for i in keep.tolist()])
    if settings.get("shuffle_labels"):  # the images no longer carry their labels
        train = Split(train.images, [train.targets[i] for i in torch.randperm(len(train), generator=generator).tolist()])
        valid = Split(valid.images, [valid.targets[i] for i in torch.randperm(len(valid), generator=generator).tolist()])
    if settings.get("leak"):  # half the valid split replaced by train images (copies under new names)
        n = len(valid) // 2
        pick = torch.randperm(len(train), generator=generator)[:n]
        valid = Split(torch.cat([train.images[pick], valid.images[n:]]),
                      [train.targets[i] for i in pick.tolist()] + valid.targets[n:])
    if settings.get("drop_valid_class") is not None:
        keep = [i for i, t in enumerate(valid.targets) if t != settings["drop_valid_class"]]
        valid = Split(valid.images[keep], [valid.targets[i] for i in keep])
    return {"train": train, "valid": valid, "classes": data["classes"], "mean": data["mean"], "std": data["std"]}


@dataclass
class Split:
    """A split as DeviceBatches takes it: decoded uint8 images (N, 3, 32, 32) and their labels."""
    images: torch.Tensor
    targets: list

    def __len__(self) -> int:
        return len(self.targets)


def build_model(settings: dict, classes: int) -> nn.Module:
    """The scenario's model: LeNet (course init), or an MLP on the flattened 3x32x32 image."""
    kind = settings.get("model", "lenet")
    if kind == "lenet":
        model = LeNet(classes, dropout=settings.get("dropout", 0.0)).initialize_weights()
        if "bias" in settings:
            for layer in (model.fc1, model.fc2):
                nn.init.constant_(layer.bias, settings["bias"])
    else:
        depth, activation = {"mlp-relu": (12, "relu"), "mlp-sigmoid": (20, "sigmoid"), "mlp-tanh": (5, "tanh")}[kind]
        width = 3 * 32 * 32
        model = nn.Sequential(OrderedDict(flatten=nn.Flatten(), input=nn.Linear(width, 64),
                                          mlp=mlp_classifier(depth, 64, activation, classes)))
        init_weights(model, settings.get("init", "default"))
    if settings.get("softmax"):
        model = nn.Sequential(model, nn.Softmax(dim=1))
    return model


def build_optimizer(model: nn.Module, settings: dict) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or Adam over what the scenario gives it: every parameter, the fc layers only, or
    the conv layers in a group of their own lr."""
    lr, named = settings.get("lr", 0.01), list(model.named_parameters())
    if settings.get("optimize") == "fc":
        groups = [{"params": [p for n, p in named if n.startswith("fc")]}]
    elif "conv_lr" in settings:
        groups = [{"params": [p for n, p in named if n.startswith("conv")], "lr": settings["conv_lr"]},
                  {"params": [p for n, p in named if not n.startswith("conv")]}]
    else:
        groups = [{"params": [p for _, p in named]}]
    if settings.get("optimizer") == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=settings.get("weight_decay", 0.0))
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=settings.get("weight_decay", 0.0))


def validate(model, batches, criterion, device, classes, settings) -> dict:
    """The valid pass as the scenario writes it: `evaluate` (eval() and no_grad()), or with a mistake."""
    if settings.get("valid_eval", True) and settings.get("valid_no_grad", True):
        return evaluate(model, batches, criterion, device, classes)
    model.train(not settings.get("valid_eval", True))
    with torch.set_grad_enabled(not settings.get("valid_no_grad", True)):
        loss_sum, correct, total = 0.0, 0, 0
        for images, labels in batches:
            logits = model(images)
            loss_sum += criterion(logits, labels).item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    return {"loss": loss_sum / total, "acc": correct / total}


def run_scenario(scenario: Scenario, data: dict, device: torch.device, epochs: int | None = None, writer=None,
                 say=None, after_training=None) -> dict:
    """Train as the scenario says, with the monitor; returns {'verdicts' (one per epoch), 'detected'
    (the first epoch whose first finding is the expected one, or None), 'seconds'}. `data`: `load_splits`';
    `say`: print each epoch's figures and findings; `after_training(epoch, model)`: called after each
    epoch's training, the last step's gradients still in place (e.g. for the gradient flow)."""
    settings = scenario.settings
    seed = settings.get("seed", 0)
    torch.manual_seed(seed)
    splits = scenario_data(data, settings, seed)
    classes = len(splits["classes"])
    model = build_model(settings, classes).to(device)
    optimizer = build_optimizer(model, settings)
    if settings.get("freeze"):  # after the optimizer was built, as a left-over freeze would be
        for name, p in model.named_parameters():
            p.requires_grad_(not name.startswith(settings["freeze"]))
    criterion = nn.CrossEntropyLoss()
    mean, std = ([0.0] * 3, [1 / 255] * 3) if settings.get("raw_pixels") else (splits["mean"], splits["std"])
    train = DeviceBatches(splits["train"], 16, mean, std, device, seed, augment=settings.get("augment", True))
    valid = DeviceBatches(splits["valid"], 64, mean, std, device)
    frozen = [settings["freeze"]] if settings.get("declare_frozen") else []
    started, verdicts, detected, step = time.perf_counter(), [], None, 0
    with TrainingMonitor(model, writer, log_interval=10, classes=splits["classes"], optimizer=optimizer,
                         frozen=frozen) as monitor:
        monitor.set_forward_order(valid.images[:1].float().to(device))
        monitor.check_data({name: (s.images, s.targets) for name, s in splits.items() if isinstance(s, Split)})
        model.train()
        for epoch in range(1, (epochs or scenario.epochs) + 1):
            train.set_epoch(epoch)
            if not settings.get("eval_mid_epoch"):
                model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for batch, (images, labels) in enumerate(train):
                step += 1
                if settings.get("eval_mid_epoch") and batch == len(train) // 2:  # validates, leaves eval mode on
                    validate(model, valid, criterion, device, classes, settings)
                if settings.get("nan_input") and step == 2:
                    images = images.clone()
                    images[0] = float("nan")  # x / std with std 0
                if settings.get("zero_grad", True):
                    optimizer.zero_grad()
                logits = model(images)
                loss = criterion(logits, labels)
                loss.backward()
                loss_value, right = monitor.after_backward(step, loss, also=(logits.argmax(1) == labels).sum())
                if monitor.nonfinite:
                    break
                optimizer.step()
                monitor.after_step(step)
                loss_sum, correct, seen = loss_sum + loss_value * len(labels), correct + int(right), seen + len(labels)
            train_loss = loss_sum / seen if seen else float("nan")
            if after_training:
                after_training(epoch, model)
            with activation_stats(model, types=DIAGNOSED, moments=False) as acts:
                figures = validate(model, valid, criterion, device, classes, settings)
            verdict = monitor.end_epoch(step, train_loss, acts.result(), train_acc=correct / max(seen, 1),
                                        valid=figures)
            verdicts.append(verdict)
            if say:
                say(f"epoch {epoch}: train loss {train_loss:.4f} acc {correct / max(seen, 1):.1%}  valid loss "
                    f"{figures['loss']:.4f} acc {figures['acc']:.1%}\n" + "\n".join(f"    {line}" for line in verdict.lines()))
            if detected is None and found(verdict, scenario.expected):
                detected = epoch
            if monitor.nonfinite:
                break
    return {"verdicts": verdicts, "detected": detected, "seconds": time.perf_counter() - started}


def found(verdict, expected: str) -> bool:
    """The verdict names `expected` first ('healthy': healthy or converged, no problem at all)."""
    if expected == "healthy":
        return verdict.status in HEALTHY and not verdict.problems
    return verdict.status == expected


def false_alarm(verdicts: list) -> bool:
    """A healthy run with a problem found in any epoch."""
    return any(v.problems for v in verdicts)
