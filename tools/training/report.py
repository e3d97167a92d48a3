"""The end-of-run report of a trained model: how it does on a split, and pictures that explain it.

Shared by train_rmb.py (the best checkpoint on the test split, at the end of a run) and
tools.inspect_run (any saved run, later).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tools.pictures.confusion import precision_recall, render_confusion_matrix
from tools.pictures.visualize import explain, save_png, write_explanation
from tools.tb.writer import PICTURES
from tools.training.batches import eval_batches
from tools.training.engine import evaluate


@torch.no_grad()
def worst_predicted(model: nn.Module, data: dict, split: str, device: torch.device, count: int = 5) -> list[dict]:
    """The `count` images of data[split] whose true class got the lowest probability: [{'path', 'truth',
    'predicted', 'probability' (of the true class)}], worst first."""
    model.eval()
    dataset, classes = data[split], data["classes"]
    truth_probs, predicted = [], []
    for images, labels in eval_batches(data, split, device):
        probs = model(images.to(device)).softmax(1)
        truth_probs.append(probs.gather(1, labels.to(device)[:, None])[:, 0].cpu())
        predicted.append(probs.argmax(1).cpu())
    truth_probs, predicted = torch.cat(truth_probs), torch.cat(predicted)
    order = truth_probs.argsort()[:count].tolist()
    paths = [path for path, _ in dataset.samples] if hasattr(dataset, "samples") else [None] * len(dataset)
    return [{"path": paths[i], "truth": classes[dataset.targets[i]], "predicted": classes[int(predicted[i])],
             "probability": float(truth_probs[i])} for i in order]


def report(model: nn.Module, data: dict, split: str, device: torch.device, out_dir: Path | None = None,
           writer=None, step: int = 0, title: str = "") -> dict:
    """Evaluate `model` on data[split] and, with `out_dir`, draw what explains it.

    data: {'classes', 'mean', 'std' (of Normalize), split: a data set of (normalised image, label)}.
    Returns {'split', 'acc', 'loss' (cross-entropy), 'total', 'confusion' (a list of rows),
    'per_class' (precision and recall), 'pngs' (paths written), 'warnings' (what could not be drawn),
    and with `out_dir` 'worst' (`worst_predicted`)}. With `out_dir`: confusion_<split>.png
    titled `title`, Grad-CAM, feature maps and kernels (see `write_explanation`), and the same in
    TensorBoard at `step` when a writer is given. Under torchrun every rank evaluates its shard and
    only the rank given an `out_dir` draws.
    """
    classes = data["classes"]
    stats = evaluate(model, eval_batches(data, split, device), nn.CrossEntropyLoss(), device, len(classes))
    result = {"split": split, "acc": stats["acc"], "loss": stats["loss"], "total": stats["total"],
              "confusion": stats["confusion"].tolist(), "per_class": precision_recall(stats["confusion"], classes),
              "pngs": [], "warnings": []}
    if out_dir is None:
        return result
    result["worst"] = worst_predicted(model, data, split, device)
    confusion = render_confusion_matrix(stats["confusion"], classes, title or split)
    paths = [save_png(confusion, Path(out_dir) / f"confusion_{split}.png")]
    if writer is not None:
        writer.add_image(f"{PICTURES}/confusion_{split}", np.asarray(confusion), step, dataformats="HWC")
    try:  # the pictures explain the run; they never cost it its results
        visuals = explain(model, data[split], classes, data["mean"], data["std"])
        paths += write_explanation(visuals, out_dir, writer, step)
    except (MemoryError, OSError, ValueError, Image.DecompressionBombError) as err:
        return result | {"pngs": [str(p) for p in paths],
                         "warnings": [f"the Grad-CAM, feature-map and kernel pictures could not be drawn ({err}); "
                                      "everything else is written"]}
    warnings = [f"{len(visuals['unreadable'])} photo(s) could not be read again (moved, deleted or changed since "
                f"they were decoded, e.g. {visuals['unreadable'][0]}): their Grad-CAM is drawn on the decoded "
                "32x32 image only"] if visuals["unreadable"] else []
    return result | {"pngs": [str(p) for p in paths], "warnings": warnings}
