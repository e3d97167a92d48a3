"""The wider labelled suite: users' own loops on four model families, with the monitor added as docs/monitor.md
shows, broken and healthy, beside the LeNet suite of `tools/suites/scenarios.py`.

Each run is one plain PyTorch loop (`run_user_loop`) with the modern pieces users have: AMP with a
GradScaler, bf16 autocast, clipping, accumulation over micro-batches, warmup then cosine to zero, label
smoothing, torch.compile, frozen backbones, AdamW; and, in the broken runs, one mistake a user makes.
The families: an MLP on tabular data, a CNN with batch norm, a residual net, an embedding-and-attention
model (`model/families.py`), on data made in `tools/suites/family_data.py`.

    python bench/bench_diagnosis.py      # both suites: detection, root cause first, false alarms, per family
"""
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from model.families import BatchNormCNN, SmallResNet, TabularMLP, TinyTransformer
from tools.monitor import TrainingMonitor
from tools.monitor.activations import DIAGNOSED, activation_stats
from tools.suites.family_data import FEATURES, LENGTH, RARE, VOCAB, make_splits

FAMILIES = {"mlp": "tabular", "bn-cnn": "images", "resnet": "images", "transformer": "tokens"}


@dataclass(frozen=True)
class UserRun:
    """name; family (FAMILIES); expected: the finding named first ('healthy': no problem in any epoch);
    story: what the user did; epochs; evidence_epoch: the first epoch whose figures show the problem."""
    name: str
    family: str
    expected: str
    story: str
    epochs: int = 4
    evidence_epoch: int = 1
    settings: dict = field(default_factory=dict)


H = "healthy"
USER_RUNS = [
    # ---- healthy: the modern loops people run ------------------------------------------------------
    UserRun("mlp-sgd-wd", "mlp", H, "SGD lr 0.05, momentum 0.9, weight decay 5e-4, standardised features", 6,
            settings={"lr": 0.05, "weight_decay": 5e-4}),
    UserRun("mlp-adamw-cosine", "mlp", H, "AdamW, 1 epoch of warmup, cosine to lr 0 at the last step", 6,
            settings={"optimizer": "adamw", "lr": 3e-3, "schedule": "warmup-cosine"}),
    UserRun("mlp-label-smoothing", "mlp", H, "CrossEntropyLoss(label_smoothing=0.1), Adam", 6,
            settings={"optimizer": "adam", "lr": 1e-3, "label_smoothing": 0.1}),
    UserRun("mlp-two-lines", "mlp", H, "the two-line form: the monitor gets the optimizer and end_epoch only", 6,
            settings={"optimizer": "adam", "lr": 1e-3, "form": "two-lines"}),
    UserRun("cnn-bn-sgd", "bn-cnn", H, "BatchNorm CNN, SGD lr 0.05, momentum 0.9, weight decay 5e-4", 6,
            settings={"lr": 0.05, "weight_decay": 5e-4}),
    UserRun("cnn-bn-bf16", "bn-cnn", H, "the same under bf16 autocast", 6,
            settings={"lr": 0.05, "weight_decay": 5e-4, "amp": "bf16"}),
    UserRun("cnn-amp-scaler", "bn-cnn", H, "fp16 autocast with a GradScaler whose first steps overflow (skipped)", 6,
            settings={"lr": 0.05, "weight_decay": 5e-4, "amp": "fp16"}),
    UserRun("cnn-clip", "bn-cnn", H, "gradient clipping to norm 1.0, Adam", 6,
            settings={"optimizer": "adam", "lr": 2e-3, "clip": 1.0}),
    UserRun("resnet-accumulate", "resnet", H, "gradients accumulated over 4 micro-batches per step", 6,
            settings={"lr": 0.05, "accumulate": 4}),
    UserRun("resnet-compiled", "resnet", H, "torch.compile(model) (the eager backend), SGD", 6,
            settings={"lr": 0.05, "compile": True}),
    UserRun("resnet-frozen-backbone", "resnet", H, "stem and layer1 frozen on purpose, and declared", 6,
            settings={"lr": 0.05, "freeze": ["stem", "layer1"], "declare_frozen": True}),
    UserRun("mlp-amp-clip", "mlp", H, "fp16 autocast, GradScaler, unscale_ then clipping", 6,
            settings={"lr": 0.05, "amp": "fp16", "clip": 2.0}),
    UserRun("cnn-bn-high-lr", "bn-cnn", H, "BatchNorm CNN, SGD lr 0.2, momentum 0.9, weight decay 5e-4", 6,
            settings={"lr": 0.2, "weight_decay": 5e-4}),
    UserRun("transformer-adam", "transformer", H, "embedding and attention, Adam lr 1e-3", 6,
            settings={"optimizer": "adam", "lr": 1e-3}),
    UserRun("transformer-cosine", "transformer", H, "AdamW with warmup then cosine to 0, dropout 0.1", 6,
            settings={"optimizer": "adamw", "lr": 2e-3, "schedule": "warmup-cosine", "dropout": 0.1}),
    UserRun("transformer-bf16-clip", "transformer", H, "bf16 autocast and clipping, Adam", 6,
            settings={"optimizer": "adam", "lr": 1e-3, "amp": "bf16", "clip": 1.0}),
    UserRun("transformer-two-lines", "transformer", H, "the two-line form, AdamW", 6,
            settings={"optimizer": "adamw", "lr": 1e-3, "form": "two-lines"}),
    # the same loops under a second seed (another draw of the data and the init: no rule on a last digit)
    UserRun("mlp-sgd-wd-seed1", "mlp", H, "mlp-sgd-wd, seed 1", 6, settings={"lr": 0.05, "weight_decay": 5e-4, "seed": 1}),
    UserRun("cnn-bn-sgd-seed1", "bn-cnn", H, "cnn-bn-sgd, seed 1", 6, settings={"lr": 0.05, "weight_decay": 5e-4, "seed": 1}),
    UserRun("resnet-accumulate-seed1", "resnet", H, "resnet-accumulate, seed 1", 6,
            settings={"lr": 0.05, "accumulate": 4, "seed": 1}),
    UserRun("transformer-adam-seed1", "transformer", H, "transformer-adam, seed 1", 6,
            settings={"optimizer": "adam", "lr": 1e-3, "seed": 1}),
    # ---- broken: one mistake each ------------------------------------------------------------------
    UserRun("mlp-lr-high", "mlp", "lr-too-high", "SGD lr 20 with momentum 0.9", settings={"lr": 20.0}),
    UserRun("mlp-lr-low", "mlp", "lr-too-low", "SGD lr 1e-6", settings={"lr": 1e-6}),
    UserRun("mlp-no-zero-grad", "mlp", "gradients-accumulate", "optimizer.zero_grad() forgotten",
            settings={"zero_grad": False}),
    UserRun("mlp-mse-indices", "mlp", "wrong-loss", "MSELoss between one output and the class index",
            settings={"loss": "mse-indices"}),
    UserRun("mlp-nll-raw", "mlp", "wrong-loss", "NLLLoss on the raw scores", settings={"loss": "nll-raw"}),
    UserRun("mlp-raw-features", "mlp", "inputs-not-normalised", "columns at their own scales (up to 1e3)",
            settings={"raw": True}),
    UserRun("mlp-imbalance", "mlp", "class-ignored", "1000:10 classes, plain CrossEntropyLoss", 4, 2,
            settings={"imbalance": True, "optimizer": "adam", "lr": 1e-3}),
    UserRun("mlp-shuffled-labels", "mlp", "plateau", "labels shuffled: the inputs carry none", 8, 5,
            settings={"shuffle_labels": True}),
    UserRun("mlp-weight-decay", "mlp", "weight-decay-too-high", "weight_decay 1.0 (meant 1e-4)",
            settings={"weight_decay": 1.0}),
    UserRun("mlp-head-after-optimizer", "mlp", "unchanged-weights", "a new head attached after the optimizer was built",
            settings={"new_head": True}),
    UserRun("mlp-step-lr-per-batch", "mlp", "lr-collapsed", "StepLR(step_size=2, gamma=0.1) stepped every batch",
            settings={"schedule": "steplr-per-batch"}),
    UserRun("mlp-dead-bias", "mlp", "dead-relu", "hidden biases initialised to -10", settings={"bias": -10.0}),
    UserRun("mlp-zero-init", "mlp", "identical-units", "every Linear layer's weights and biases initialised to 0",
            settings={"zero_init": True}),
    UserRun("cnn-zero-init", "bn-cnn", "identical-units", "every conv and Linear weight initialised to 0",
            settings={"zero_init": True}),
    UserRun("mlp-nan-input", "mlp", "non-finite", "a NaN in one batch (a division by a zero std)",
            settings={"nan_input": True}),
    UserRun("mlp-leak", "mlp", "data-leak", "half the valid rows copied from train", settings={"leak": True}),
    UserRun("cnn-lr-high", "bn-cnn", "lr-too-high", "SGD lr 50, momentum 0.9", settings={"lr": 50.0}),
    UserRun("cnn-eval-mid-epoch", "bn-cnn", "train-in-eval-mode",
            "a validation in the middle of each epoch calls model.eval() and never model.train()",
            settings={"eval_mid_epoch": True}),
    UserRun("cnn-valid-train-mode", "bn-cnn", "eval-in-train-mode", "validated without model.eval()",
            settings={"valid_eval": False}),
    UserRun("cnn-sigmoid-bce", "bn-cnn", "wrong-loss", "a sigmoid, then BCEWithLogitsLoss on one-hot targets",
            settings={"loss": "sigmoid-bce"}),
    UserRun("cnn-softmax", "bn-cnn", "softmax-before-loss", "a softmax at the end, then CrossEntropyLoss",
            settings={"loss": "softmax-ce"}),
    UserRun("cnn-sigmoid-ce", "bn-cnn", "softmax-before-loss", "a sigmoid at the end, then CrossEntropyLoss",
            settings={"loss": "sigmoid-ce"}),
    UserRun("mlp-softmax-wrong-axis", "mlp", "softmax-before-loss", "nn.Softmax(dim=0) at the end (over the batch), "
            "then CrossEntropyLoss", settings={"loss": "softmax-batch-axis-ce"}),
    UserRun("cnn-no-zero-grad", "bn-cnn", "gradients-accumulate", "optimizer.zero_grad() forgotten",
            settings={"zero_grad": False}),
    UserRun("cnn-raw-pixels", "bn-cnn", "inputs-not-normalised", "pixels as 0-255 floats", settings={"raw": True}),
    UserRun("cnn-step-lr-per-batch", "bn-cnn", "lr-collapsed", "StepLR stepped every batch",
            settings={"schedule": "steplr-per-batch"}),
    UserRun("resnet-lr-low", "resnet", "lr-too-low", "SGD lr 1e-6", settings={"lr": 1e-6}),
    UserRun("resnet-finetune-frozen-only", "resnet", "unchanged-weights",
            "a finetune whose optimizer holds only the frozen backbone: the head trains nowhere",
            settings={"optimize_frozen_only": True}),
    UserRun("resnet-no-grad-missing", "resnet", "eval-with-autograd", "validation without torch.no_grad()",
            settings={"valid_no_grad": False}),
    UserRun("resnet-frozen-by-mistake", "resnet", "unchanged-weights",
            "layer2 left with requires_grad False (frozen=[] declared: nothing frozen on purpose)",
            settings={"freeze": ["layer2"], "declare_frozen": False}),
    UserRun("resnet-shuffled-labels", "resnet", "plateau", "labels shuffled", 8, 5, settings={"shuffle_labels": True}),
    UserRun("transformer-lr-high", "transformer", "lr-too-high", "Adam lr 0.5", settings={"optimizer": "adam", "lr": 0.5}),
    UserRun("transformer-lr-low", "transformer", "lr-too-low", "Adam lr 1e-8",
            settings={"optimizer": "adam", "lr": 1e-8}),
    UserRun("transformer-nll-raw", "transformer", "wrong-loss", "NLLLoss on raw scores",
            settings={"optimizer": "adam", "lr": 1e-3, "loss": "nll-raw"}),
    UserRun("transformer-no-zero-grad", "transformer", "gradients-accumulate", "optimizer.zero_grad() forgotten",
            settings={"optimizer": "adam", "lr": 1e-3, "zero_grad": False}),
    UserRun("transformer-eval-mid-epoch", "transformer", "train-in-eval-mode",
            "model.eval() for a mid-epoch validation, model.train() never called again",
            settings={"optimizer": "adam", "lr": 1e-3, "dropout": 0.1, "eval_mid_epoch": True}),
    UserRun("transformer-step-lr-per-batch", "transformer", "lr-collapsed", "StepLR stepped every batch",
            settings={"optimizer": "adam", "lr": 1e-3, "schedule": "steplr-per-batch"}),
]
USER_BY_NAME = {r.name: r for r in USER_RUNS}
BATCH = 32


def build(run: UserRun, classes: int) -> nn.Module:
    """The run's model, with one output for a regression loss on class indices."""
    s, outputs = run.settings, 1 if run.settings.get("loss") == "mse-indices" else classes
    if run.family == "mlp":
        model = TabularMLP(FEATURES + RARE, outputs, dropout=s.get("dropout", 0.0))
        if "bias" in s:
            for layer in (model.net[0], model.net[3]):
                nn.init.constant_(layer.bias, s["bias"])
    elif run.family == "bn-cnn":
        model = BatchNormCNN(outputs)
    elif run.family == "resnet":
        model = SmallResNet(outputs)
    else:
        model = TinyTransformer(VOCAB, LENGTH, outputs, dropout=s.get("dropout", 0.0))
    if s.get("zero_init"):  # every weight and bias 0, as a user might "start from nothing"
        for layer in model.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.zeros_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    if s.get("loss") == "softmax-ce":
        model = nn.Sequential(model, nn.Softmax(dim=1))
    elif s.get("loss") == "softmax-batch-axis-ce":  # a softmax over the batch, not the classes
        model = nn.Sequential(model, nn.Softmax(dim=0))
    elif s.get("loss") in ("sigmoid-bce", "sigmoid-ce"):
        model = nn.Sequential(model, nn.Sigmoid())
    return model


def make_optimizer(params, s: dict) -> torch.optim.Optimizer:
    lr, decay = s.get("lr", 0.01), s.get("weight_decay", 0.0)
    if s.get("optimizer") == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if s.get("optimizer") == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay or 0.01)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)


def loss_of(kind: str, outputs: torch.Tensor, labels: torch.Tensor, classes: int, smoothing: float) -> torch.Tensor:
    """The run's loss: cross-entropy, or the mistake it makes."""
    if kind == "mse-indices":
        return F.mse_loss(outputs.squeeze(1), labels.float())
    if kind == "nll-raw":
        return F.nll_loss(outputs, labels)
    if kind == "sigmoid-bce":
        return F.binary_cross_entropy_with_logits(outputs, F.one_hot(labels, classes).float())
    return F.cross_entropy(outputs, labels, label_smoothing=smoothing)


def predictions(kind: str, outputs: torch.Tensor, classes: int) -> torch.Tensor:
    if kind == "mse-indices":
        return outputs.squeeze(1).round().clamp(0, classes - 1).long()
    return outputs.argmax(1)


def validate(model, batches, kind: str, classes: int, s: dict) -> dict:
    """{'loss', 'acc', 'confusion'} over the valid batches, as the run writes its validation."""
    model.train(not s.get("valid_eval", True))
    confusion, loss_sum, total = torch.zeros(classes, classes, dtype=torch.long), 0.0, 0
    with torch.set_grad_enabled(not s.get("valid_no_grad", True)):
        for x, y in batches:
            out = model(x)
            loss_sum += loss_of(kind, out, y, classes, 0.0).item() * len(y)
            confusion += torch.bincount(y * classes + predictions(kind, out, classes), minlength=classes ** 2).view(
                classes, classes)
            total += len(y)
    return {"loss": loss_sum / total, "acc": confusion.trace().item() / total, "confusion": confusion}


def batches_of(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> list:
    order = torch.randperm(len(y), generator=generator) if generator is not None else torch.arange(len(y))
    return [(x[i], y[i]) for i in order.split(BATCH)]


def scheduler_for(optimizer, s: dict, steps_per_epoch: int, epochs: int):
    """Warmup for an epoch then cosine to exactly 0 at the last step (per step), or StepLR stepped per batch."""
    if s.get("schedule") == "warmup-cosine":
        warm, total = steps_per_epoch, steps_per_epoch * epochs

        def factor(step):  # step: the scheduler's steps so far; exactly 0 once the last step is taken
            return (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if s.get("schedule") == "steplr-per-batch":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    return None


def prepare(run: UserRun, seed: int) -> tuple:
    """The run's splits (with its data mistakes) and model, optimizer, monitor arguments."""
    s = run.settings
    splits = make_splits(FAMILIES[run.family], seed, imbalance=s.get("imbalance", False), raw=s.get("raw", False))
    (xt, yt), (xv, yv), classes = splits["train"], splits["valid"], splits["classes"]
    generator = torch.Generator().manual_seed(seed + 1)
    if s.get("shuffle_labels"):
        yt, yv = yt[torch.randperm(len(yt), generator=generator)], yv[torch.randperm(len(yv), generator=generator)]
    if s.get("leak"):
        half = len(yv) // 2
        xv, yv = torch.cat([xt[:half], xv[half:]]), torch.cat([yt[:half], yv[half:]])
    model = build(run, classes)
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in s.get("freeze", [])))
    if s.get("optimize_frozen_only"):  # the backbone frozen, the optimizer built over it instead of the head
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("fc"))
        optimizer = make_optimizer([p for n, p in model.named_parameters() if not n.startswith("fc")], s)
    else:
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], s)
    if s.get("new_head"):  # attached after the optimizer was built: optimizer.zero_grad() never clears it
        model.net[-1] = nn.Linear(64, classes)
    frozen = (s["freeze"] if s.get("declare_frozen") else []) if "freeze" in s else None
    return (xt, yt), (xv, yv), classes, model, optimizer, frozen


def run_user_loop(run: UserRun, device: torch.device = torch.device("cpu"), say=None) -> dict:
    """Train as the run says, the monitor added as docs/monitor.md shows; returns {'verdicts', 'detected' (the
    first epoch whose first finding is the expected one), 'seconds'}."""
    s, seed = run.settings, run.settings.get("seed", 0)
    torch.manual_seed(seed)
    (xt, yt), (xv, yv), classes, model, optimizer, frozen = prepare(run, seed)
    train_model = torch.compile(model, backend="eager") if s.get("compile") else model
    kind, accumulate, generator = s.get("loss", "ce"), s.get("accumulate", 1), torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(yt) / BATCH / accumulate)
    scheduler = scheduler_for(optimizer, s, steps_per_epoch, run.epochs)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(s.get("amp"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24) if s.get("amp") == "fp16" else None  # overflows first
    explicit = s.get("form", "explicit") == "explicit"
    started, verdicts, detected, step = time.perf_counter(), [], None, 0
    valid_batches = batches_of(xv, yv, None)
    with TrainingMonitor(model, None, classes=classes, optimizer=optimizer, frozen=frozen) as monitor:
        monitor.check_data({"train": (xt, yt), "valid": (xv, yv)})
        for epoch in range(1, run.epochs + 1):
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            batches = batches_of(xt, yt, generator)
            for i, (x, y) in enumerate(batches):
                if s.get("nan_input") and epoch == 1 and i == 3:
                    x = x.clone()
                    x[0] = float("nan")
                if s.get("zero_grad", True) and i % accumulate == 0:
                    optimizer.zero_grad()
                with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
                    out = train_model(x)
                    loss = loss_of(kind, out, y, classes, s.get("label_smoothing", 0.0))
                (scaler.scale(loss / accumulate) if scaler else loss / accumulate).backward()
                step += 1
                value = monitor.after_backward(step, loss) if explicit else loss.item()
                loss_sum, seen = loss_sum + value * len(y), seen + len(y)
                correct += int((predictions(kind, out.float(), classes) == y).sum())
                if (i + 1) % accumulate == 0:
                    if scaler and s.get("clip"):
                        scaler.unscale_(optimizer)
                    if s.get("clip"):
                        nn.utils.clip_grad_norm_(model.parameters(), s["clip"])
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
                if s.get("eval_mid_epoch") and i == len(batches) // 2:
                    model.eval()  # ... and no model.train() after it
                    validate(model, valid_batches, kind, classes, {})
                if monitor.nonfinite:
                    break
            with activation_stats(model, explicit, DIAGNOSED, moments=False) as acts:
                valid = validate(model, valid_batches, kind, classes, s)
            verdict = monitor.end_epoch(train_loss=loss_sum / max(seen, 1), train_acc=correct / max(seen, 1),
                                        valid=valid, activations=acts.result() if explicit else None)
            verdicts.append(verdict)
            if say:
                say(f"epoch {epoch}: train loss {loss_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.1%}  valid "
                    f"loss {valid['loss']:.4f} acc {valid['acc']:.1%}\n" + "\n".join(f"    {line}" for line in verdict.lines()))
            if detected is None and (verdict.status == run.expected if run.expected != "healthy" else False):
                detected = epoch
            if monitor.nonfinite:
                break
    return {"verdicts": verdicts, "detected": detected, "seconds": time.perf_counter() - started}
