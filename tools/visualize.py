"""Pictures of what a conv net learned: confusion matrix, feature maps, kernels, Grad-CAM overlays.

Images come back as uint8 arrays (H, W, 3) or PIL images, ready for PNG files and for
SummaryWriter.add_image(..., dataformats="HWC"). The confusion matrix is drawn with PIL alone (about a
millisecond), so that it can be logged every epoch without slowing training.
"""
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from tools.hooks import hooks

MAP_LAYERS = (nn.Conv2d, nn.ReLU)  # feature maps are drawn before the ReLU (conv) and after it, as in the course


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


@lru_cache(maxsize=8)
def _font(size: int):
    return ImageFont.load_default(size=size)  # loaded once per size: it parses a font file


def _blues(value: float) -> tuple:
    """White (0) to dark blue (1)."""
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    return tuple(int(c) for c in light + (dark - light) * min(max(value, 0.0), 1.0))


def render_confusion_matrix(confusion: torch.Tensor, classes: list[str], title: str = "",
                            cell: int = 90) -> Image.Image:
    """Rows: true class, columns: predicted; the count in each cell, colour = share of its row."""
    cm = confusion.cpu().long()
    n = len(classes)
    rows = cm.sum(1, keepdim=True).clamp_min(1).double()
    share = (cm / rows).tolist()
    font, small = _font(max(cell // 5, 11)), _font(max(cell // 7, 10))
    left, top = cell + 30, cell // 2 + 40
    img = Image.new("RGB", (max(left + n * cell + 20, 260), top + n * cell + 50), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 6), title, fill="black", font=font)
    for j, name in enumerate(classes):
        draw.text((left + j * cell + cell // 2, top - 8), name, fill="black", font=small, anchor="md")
    draw.text((left + n * cell // 2, top - 8 - cell // 5), "predicted", fill="gray", font=small, anchor="md")
    for i, name in enumerate(classes):
        draw.text((left - 8, top + i * cell + cell // 2), name, fill="black", font=small, anchor="rm")
        for j in range(n):
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=_blues(share[i][j]), outline="gray")
            draw.text((box[0] + cell // 2, box[1] + cell // 2), str(int(cm[i, j])), font=font, anchor="mm",
                      fill="white" if share[i][j] > 0.5 else "black")
    draw.text((10, top + n * cell // 2), "true", fill="gray", font=small, anchor="lm")
    draw.text((left, top + n * cell + 12), f"{int(cm.sum())} images; colour: share of the row", fill="gray", font=small)
    return img


def image_grid(tensor: torch.Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """(N, C, h, w) as one uint8 (H, W, 3) grid, each image scaled to [0, 1] on its own."""
    from torchvision.utils import make_grid

    grid = make_grid(tensor.detach().float().cpu(), nrow=nrow, normalize=True, scale_each=True, padding=pad)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def enlarge(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """(H, W, 3) -> (factor H, factor W, 3), each pixel a factor x factor block (tiny images stay sharp)."""
    return np.kron(image, np.ones((factor, factor, 1), dtype=image.dtype))


def feature_maps(model: nn.Module, image: torch.Tensor, types=(nn.Conv2d,)) -> dict[str, torch.Tensor]:
    """Outputs of every module of `types` for one image (3, H, W): name -> (channels, h, w), in forward
    order; modules whose output is not a stack of maps (a ReLU after a linear layer) are left out.

    Caught with forward hooks during one ordinary forward pass, so every layer sees exactly what
    `forward` gives it (ReLU and pooling included). The hooks are removed before returning.
    """
    maps = {}

    def keep(name):
        def record(_module, _inputs, output):
            if output.dim() == 4:  # maps (N, C, h, w) only: a ReLU after a linear layer has none
                maps[name] = output.detach()[0]
        return record

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    was_training = model.training
    model.eval()
    try:
        with hooks([m.register_forward_hook(keep(n)) for n, m in layers]), torch.no_grad():
            model(image.unsqueeze(0))
    finally:
        model.train(was_training)
    return maps


def feature_map_grids(maps: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Each layer's channels as one grid of gray images: name -> uint8 (H, W, 3)."""
    return {name: image_grid(fmap.unsqueeze(1), nrow=min(8, len(fmap)), pad=2) for name, fmap in maps.items()}


def kernel_grids(model: nn.Module, scale: int = 8) -> dict[str, np.ndarray]:
    """Every conv layer's kernels as image grids, enlarged `scale` times (nearest neighbour).

    '<layer>/all': every kernel, as RGB when the layer reads 3 channels, else one gray tile per
    (output, input) pair, a row per output channel; '<layer>/out_<k>': output channel k's kernels,
    one gray tile per input channel.
    """
    grids = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight.detach().float().cpu()              # (out, in, k, k)
        out_ch, in_ch = weight.shape[:2]
        if in_ch == 3:
            grids[f"{name}/all"] = image_grid(weight, nrow=min(out_ch, 8))
        else:
            grids[f"{name}/all"] = image_grid(weight.reshape(-1, 1, *weight.shape[2:]), nrow=in_ch)
        for k in range(out_ch):
            grids[f"{name}/out_{k:02d}"] = image_grid(weight[k].unsqueeze(1), nrow=in_ch)
    return {tag: enlarge(grid, scale) for tag, grid in grids.items()}


def denormalize(image: torch.Tensor, mean, std) -> np.ndarray:
    """Undo Normalize and ToTensor: (3, H, W) normalised -> uint8 (H, W, 3)."""
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    pixels = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def overlay(rgb: np.ndarray, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """A Grad-CAM heat map (H, W) in [0, 1] over an RGB image (H, W, 3): uint8 (H, W, 3)."""
    import matplotlib

    heat = matplotlib.colormaps["jet"](cam.detach().cpu().numpy())[..., :3] * 255
    return (rgb * (1 - alpha) + heat * alpha).round().clip(0, 255).astype(np.uint8)


def overlay_on_photo(path: str, cam: torch.Tensor, width: int = 240) -> np.ndarray:
    """The Grad-CAM map over the original photo, `width` pixels wide: the model saw the whole photo
    resized to a square, so the map stretched back to the photo's shape lies on what it looked at."""
    from torch.nn import functional as F

    from tools.rmb_dataset import open_rgb

    photo = open_rgb(path)
    height = max(1, round(width * photo.height / photo.width))
    rgb = np.asarray(photo.resize((width, height), Image.BILINEAR))
    big = F.interpolate(cam[None, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
    return overlay(rgb, big[0, 0].clamp(0, 1))


def save_png(array_or_image, path: Path) -> Path:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path)
    return Path(path)


def plot_gradcam_panel(items: list[dict], path: Path, title: str = "Grad-CAM") -> Path:
    """A row of (image, overlay) pairs titled with prediction and truth, into a PNG.

    items: [{'image': uint8 (H, W, 3), 'overlay': uint8 (H, W, 3), 'title': str}]. Returns path.
    """
    from tools.plots import pyplot

    plt = pyplot()
    rows = 3 if all(item.get("photo") is not None for item in items) else 2
    fig, axes = plt.subplots(rows, len(items), figsize=(2.2 * len(items), 2.0 * rows + 0.6), dpi=100,
                             squeeze=False)
    for k, item in enumerate(items):
        axes[0, k].imshow(item["image"], interpolation="nearest")
        axes[1, k].imshow(item["overlay"], interpolation="bilinear")
        if rows == 3:
            axes[2, k].imshow(item["photo"])
        axes[0, k].set_title(item["title"], fontsize=8)
        for ax in axes[:, k]:
            ax.axis("off")
    for row, label in enumerate(["input (32x32)", "Grad-CAM", "on the photo"][:rows]):
        axes[row, 0].text(-0.08, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, va="center",
                          ha="right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def class_label(name: str) -> str:
    """'100' -> '100 Yuan' for the RMB data's numeric folders; any other class name as it is."""
    return f"{name} Yuan" if name.isdigit() else name


def explain(model: nn.Module, dataset, classes: list[str], mean, std, count: int = 8) -> dict:
    """Pictures of a trained model on a data set whose items are (normalised image, label).

    Returns {'gradcam': [{'image', 'overlay', 'title', 'path', 'cam', 'photo'}] for up to `count` images
    (wrong predictions first), 'input': the first image (H, W, 3), 'feature_maps': layer -> grid,
    'kernels': tag -> grid, 'unreadable': photos that could not be opened again (they vanished or
    changed since they were decoded: their Grad-CAM is drawn on the decoded 32x32 image only)}.
    Everything is computed with hooks that are removed afterwards.
    """
    from tools.gradcam import gradcam, last_conv

    device = next(model.parameters()).device
    layer = last_conv(model)
    found, seen_per_class = [], {}
    for index in range(min(len(dataset), 64)):  # enough to find the wrong predictions among the first
        image, label = dataset[index]
        cam, predicted, probs = gradcam(model, layer, image.to(device))
        rank = seen_per_class[label] = seen_per_class.get(label, -1) + 1
        found.append((predicted == label, rank, label, index, image, cam, predicted, probs))
    found.sort(key=lambda item: item[:3])  # wrong predictions first, then the classes in turn
    items, unreadable = [], []
    for _, _, label, index, image, cam, predicted, probs in found[:count]:
        rgb = denormalize(image, mean, std)
        path = dataset.samples[index][0] if hasattr(dataset, "samples") else None
        try:
            photo = overlay_on_photo(path, cam) if path else None
        except (OSError, ValueError, SyntaxError):  # the photo vanished or changed since it was decoded
            photo = None
            unreadable.append(path)
        items.append({"image": rgb, "overlay": overlay(rgb, cam), "cam": cam.cpu(), "path": path, "photo": photo,
                      "title": f"{type(model).__name__} got {class_label(classes[predicted])},\n"
                               f"truth {class_label(classes[label])} ({probs[predicted]:.0%})"})
    first = dataset[0][0].to(device)
    return {"gradcam": items, "input": denormalize(first, mean, std), "unreadable": unreadable,
            "feature_maps": feature_map_grids(feature_maps(model, first, MAP_LAYERS)), "kernels": kernel_grids(model)}


def write_explanation(visuals: dict, out_dir: Path, writer=None, step: int = 0) -> list[Path]:
    """The pictures of `explain` as PNGs in out_dir (gradcam.png, feature_maps_<layer>.png,
    kernels_<layer>.png) and, with a writer, as TensorBoard images. Returns the PNG paths."""
    out_dir = Path(out_dir)
    paths = []
    if visuals["gradcam"]:
        paths.append(plot_gradcam_panel(visuals["gradcam"], out_dir / "gradcam.png"))
    for name, grid in visuals["feature_maps"].items():
        paths.append(save_png(grid, out_dir / f"feature_maps_{name}.png"))
    for tag, grid in visuals["kernels"].items():
        if tag.endswith("/all"):
            paths.append(save_png(grid, out_dir / f"kernels_{tag.split('/')[0]}.png"))
    if writer is not None:
        log_pictures(writer, visuals, step)
        for k, item in enumerate(visuals["gradcam"]):
            side_by_side = np.concatenate([enlarge(item["image"]), enlarge(item["overlay"])], axis=1)
            writer.add_image(f"gradcam/{k}", side_by_side, step, dataformats="HWC")
            writer.add_text(f"gradcam/{k}", item["title"], step)
    return paths


def log_pictures(writer, visuals: dict, step: int) -> None:
    """The input image, feature maps and kernels of `explain` (or of `snapshot`) as TensorBoard images."""
    writer.add_image("feature_maps/input", enlarge(visuals["input"]), step, dataformats="HWC")
    for name, grid in visuals["feature_maps"].items():
        writer.add_image(f"feature_maps/{name}", grid, step, dataformats="HWC")
    for tag, grid in visuals["kernels"].items():
        writer.add_image(f"kernels/{tag}", grid, step, dataformats="HWC")


def snapshot(model: nn.Module, image: torch.Tensor, mean, std) -> dict:
    """Input, feature maps and kernels without Grad-CAM: what train_rmb.py logs at the start."""
    return {"input": denormalize(image, mean, std), "feature_maps": feature_map_grids(feature_maps(model, image, MAP_LAYERS)),
            "kernels": kernel_grids(model), "gradcam": []}
