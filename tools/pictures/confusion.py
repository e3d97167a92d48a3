"""The confusion matrix: per-class precision and recall, and its picture, bounded whatever the class count
(past CONFUSION_CLASSES classes, the ones with the most mistakes)."""
import numpy as np
import torch
from PIL import Image, ImageDraw

from tools.pictures.visualize import load_font


def _blues(value: float) -> tuple:
    """White (0) to dark blue (1)."""
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    return tuple(int(c) for c in light + (dark - light) * min(max(value, 0.0), 1.0))


def precision_recall(confusion: torch.Tensor, classes: list[str]) -> dict:
    """Per-class precision and recall from a confusion matrix (rows true, columns predicted).

    Returns {class: {'precision', 'recall', 'support'}}; a ratio with nothing to count is None.
    """
    cm = confusion.double()
    result = {}
    for i, name in enumerate(classes):
        predicted, actual = cm[:, i].sum().item(), cm[i].sum().item()
        result[name] = {"precision": cm[i, i].item() / predicted if predicted else None,
                        "recall": cm[i, i].item() / actual if actual else None, "support": int(actual)}
    return result



CONFUSION_CLASSES = 20   # a confusion matrix draws at most this many classes: those with the most mistakes
CONFUSION_SIDE = 1200    # ... in cells that shrink so that the grid stays within this many pixels a side


def worst_classes(confusion: torch.Tensor, keep: int) -> list[int]:
    """The `keep` classes with the most mistakes (their row's and their column's off-diagonal counts), in
    class order; ties go to the more frequent class."""
    cm = confusion.long()
    diagonal = cm.diagonal()
    mistakes = cm.sum(1) - diagonal + cm.sum(0) - diagonal
    order = sorted(range(len(cm)), key=lambda c: (-int(mistakes[c]), -int(cm[c].sum()), c))
    return sorted(order[:keep])


def render_confusion_matrix(confusion: torch.Tensor, classes: list[str], title: str = "",
                            cell: int = 90) -> Image.Image:
    """Rows: true class, columns: predicted; the count in each cell, colour = share of its row. Bounded
    whatever the class count: past CONFUSION_CLASSES classes it draws the ones with the most mistakes (and
    says so under the grid), its cells shrunk to keep the grid within CONFUSION_SIDE pixels."""
    full = confusion.cpu().long()
    note = ""
    if len(classes) > CONFUSION_CLASSES:
        shown = worst_classes(full, CONFUSION_CLASSES)
        note = f"; the {len(shown)} of {len(classes)} classes with the most mistakes"
        full_total = int(full.sum())
        full, classes = full[shown][:, shown], [classes[c] for c in shown]
    cm = full
    n = len(classes)
    cell = max(min(cell, CONFUSION_SIDE // max(n, 1)), 24)
    rows = cm.sum(1, keepdim=True).clamp_min(1).double()
    share = (cm / rows).tolist()
    big, small = load_font(max(cell // 5, 11)), load_font(max(cell // 7, 10))
    left, top = cell + 30, cell // 2 + 40
    img = Image.new("RGB", (max(left + n * cell + 20, 260), top + n * cell + 50), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 6), title, fill="black", font=big)
    for j, name in enumerate(classes):
        draw.text((left + j * cell + cell // 2, top - 8), name, fill="black", font=small, anchor="md")
    draw.text((left + n * cell // 2, top - 8 - cell // 5), "predicted", fill="gray", font=small, anchor="md")
    for i, name in enumerate(classes):
        draw.text((left - 8, top + i * cell + cell // 2), name, fill="black", font=small, anchor="rm")
        for j in range(n):
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=_blues(share[i][j]), outline="gray")
            draw.text((box[0] + cell // 2, box[1] + cell // 2), str(int(cm[i, j])), font=big, anchor="mm",
                      fill="white" if share[i][j] > 0.5 else "black")
    draw.text((10, top + n * cell // 2), "true", fill="gray", font=small, anchor="lm")
    total = full_total if note else int(cm.sum())
    draw.text((left, top + n * cell + 12), f"{total} images; colour: share of the row{note}", fill="gray", font=small)
    return img
