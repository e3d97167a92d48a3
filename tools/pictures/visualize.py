"""Pictures of what a conv net learned: feature maps, kernels, Grad-CAM overlays, the verdict strip (the
confusion matrix is tools.pictures.confusion's).

Images come back as uint8 arrays (H, W, 3) or PIL images, ready for PNG files and for
SummaryWriter.add_image(..., dataformats="HWC"). Pictures logged every epoch are drawn with PIL alone
(about a millisecond), so that they do not slow training.
"""
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from tools.monitor.hooks import hooks
from tools.tb.writer import PICTURES

MAP_LAYERS = (nn.Conv2d, nn.ReLU)  # feature maps are drawn before the ReLU (conv) and after it, as in the course
MAX_MAP_CHANNELS = 16     # a layer's first 16 channels are drawn (a deep net's 512 would be an unreadable sheet)
MAX_KERNEL_TILES = 256    # a deeper conv's kernels (a tile per output x input channel) are drawn up to this many


@lru_cache(maxsize=8)
def load_font(size: int):
    return ImageFont.load_default(size=size)  # loaded once per size: it parses a font file


STATUS_COLOURS = {"healthy": (46, 125, 50), "converged": (21, 101, 192), None: (189, 189, 189)}
PROBLEM_COLOURS = [(198, 40, 40), (239, 108, 0), (142, 36, 170), (173, 20, 87), (121, 85, 72), (0, 121, 107)]


def epochs_text(epochs: list[int]) -> str:
    """[1, 2, 3, 5] -> 'epochs 1-3, 5'."""
    spans, start = [], None
    for i, e in enumerate(epochs):
        start = e if start is None else start
        if i + 1 == len(epochs) or epochs[i + 1] != e + 1:
            spans.append(f"{start}-{e}" if e > start else str(e))
            start = None
    return ("epochs " if len(epochs) > 1 else "epoch ") + ", ".join(spans)


def render_verdict_strip(statuses: list[str | None], note: str = "", width: int = 480, run: str = "",
                         flags: str = "") -> Image.Image:
    """The run's epochs as a row of boxes coloured by the verdict's status (healthy green, converged blue,
    each problem a colour of its own), and a line per status naming its epochs; `note` below (the test
    accuracy). `run` (the run folder's name) and `flags` (what tells it from its neighbours) head it, in
    the picture: TensorBoard cuts a card's run label to its first characters, the timestamp, which tells
    seven runs apart by nothing. Sized for TensorBoard's image card: its text as large as the card's title."""
    font, small = load_font(18), load_font(16)
    problems = [s for s in dict.fromkeys(statuses) if s not in STATUS_COLOURS]
    colour = STATUS_COLOURS | {s: PROBLEM_COLOURS[i % len(PROBLEM_COLOURS)] for i, s in enumerate(problems)}
    n = max(len(statuses), 1)
    named = [line for line in (run, flags) if line]
    left, top, box = 10, 36 + 22 * len(named), (width - 20) / n
    legend = list(dict.fromkeys(statuses))
    height = top + 34 + 22 * len(legend) + (26 if note else 0) + 8
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    y = 8
    for line, face, ink in zip(named, (font, small), ("black", "dimgray")):
        while len(line) > 1 and draw.textlength(line, font=face) > width - 2 * left:  # cut to the card, with …
            line = line[:-2] + "…"
        draw.text((left, y), line, fill=ink, font=face)
        y += 22
    draw.text((left, y), f"verdict of each epoch ({len(statuses)})", fill="black", font=font if not named else small)
    for i, status in enumerate(statuses):
        x0 = left + i * box
        draw.rectangle([x0, top, x0 + max(box - 2, 1), top + 22], fill=colour[status])
    y = top + 30
    for status in legend:
        epochs = [i + 1 for i, s in enumerate(statuses) if s == status]
        draw.rectangle([left, y + 3, left + 14, y + 17], fill=colour[status])
        draw.text((left + 22, y), f"{status or 'no verdict'}: {epochs_text(epochs)}", fill="black", font=small)
        y += 22
    if note:
        draw.text((left, y + 4), note, fill="black", font=small)
    return img


def enlarge(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """(H, W, 3) -> (factor H, factor W, 3), each pixel a factor x factor block (tiny images stay sharp)."""
    return np.kron(image, np.ones((factor, factor, 1), dtype=image.dtype))


def feature_maps(model: nn.Module, image: torch.Tensor, types=(nn.Conv2d,)) -> dict[str, torch.Tensor]:
    """Outputs of every module of `types` for one image (3, H, W): name -> (channels, h, w), in forward
    order; modules whose output is not a stack of maps (a ReLU after a linear layer) are left out.

    A model may name the modules to draw (`picture_layers`, e.g. a ResNet's stem and stages: its 37 convs
    and ReLUs would bury the few that tell the story); then those are drawn, whatever their type. Caught
    with forward hooks during one ordinary forward pass, so every layer sees exactly what `forward` gives
    it (ReLU and pooling included). The hooks are removed before returning.
    """
    maps = {}

    def keep(name):
        def record(_module, _inputs, output):
            if output.dim() == 4:  # maps (N, C, h, w) only: a ReLU after a linear layer has none
                maps[name] = output.detach()[0]
        return record

    chosen = getattr(model, "picture_layers", None)
    layers = [(n, m) for n, m in model.named_modules() if (n in chosen if chosen else isinstance(m, types))]
    was_training = model.training
    model.eval()
    try:
        with hooks([m.register_forward_hook(keep(n)) for n, m in layers]), torch.no_grad():
            model(image.unsqueeze(0))
    finally:
        model.train(was_training)
    return maps


def denormalize(image: torch.Tensor, mean, std) -> np.ndarray:
    """Undo Normalize and ToTensor: (3, H, W) normalised -> uint8 (H, W, 3)."""
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    pixels = (image.detach().cpu().float() * std + mean).clamp(0, 1)
    return (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def jet(values: np.ndarray) -> np.ndarray:
    """The jet colour map (blue, cyan, yellow, red) of values in [0, 1]: (..., 3) floats in [0, 1]."""
    return np.clip(1.5 - np.abs(4 * values[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def overlay(rgb: np.ndarray, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """A Grad-CAM heat map (H, W) in [0, 1] over an RGB image (H, W, 3): uint8 (H, W, 3)."""
    heat = jet(cam.detach().cpu().numpy()) * 255
    return (rgb * (1 - alpha) + heat * alpha).round().clip(0, 255).astype(np.uint8)


def overlay_on_photo(path: str, cam: torch.Tensor, width: int = 120) -> np.ndarray:
    """The Grad-CAM map over the original photo, fitted into a `width` x `width` box (its longer side
    `width` pixels, whatever its shape: a 1 x 10000 photo gives a 1 x 120 strip, not a 120 x 1,200,000
    one): the model saw the whole photo resized to a square, so the map stretched back to the photo's
    shape lies on what it looked at."""
    from torch.nn import functional as F

    from tools.data.decode import open_rgb

    photo = open_rgb(path, width)  # a JPEG decoded at a reduced scale
    scale = width / max(photo.width, photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    width, height = size
    rgb = np.asarray(photo.resize(size, Image.BILINEAR))
    big = F.interpolate(cam[None, None].float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
    return overlay(rgb, big[0, 0].clamp(0, 1))


def save_png(array_or_image, path: Path) -> Path:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    image.save(path)
    return Path(path)


def gradcam_sheet(items: list[dict], title: str = "Grad-CAM", per_line: int = 4) -> np.ndarray:
    """Grad-CAM of a few images in one labelled picture, legible at TensorBoard's card width: for each
    line of `per_line` images, their inputs captioned with prediction, truth and confidence, their
    Grad-CAM overlays and, where the photos could be read, the overlays on the photos. Drawn with PIL
    (a tenth of matplotlib's time). items: [{'image', 'overlay': uint8 (H, W, 3), 'title': str,
    'photo': (H, W, 3) or None}]. Returns uint8 (H, W, 3)."""
    rows = []
    with_photos = all(item.get("photo") is not None for item in items)
    for start in range(0, len(items), per_line):
        line = items[start:start + per_line]
        rows.append(("input", [item["image"] for item in line], [item["title"] for item in line]))
        rows.append(("Grad-CAM", [item["overlay"] for item in line], [""] * len(line)))
        if with_photos:
            rows.append(("photo", [item["photo"] for item in line], [""] * len(line)))
    return with_colour_bar(labelled_sheet(title, rows, tile=120, per_line=per_line))


def with_colour_bar(sheet: np.ndarray, width: int = 300) -> np.ndarray:
    """The sheet with the Grad-CAM colour scale under it: blue (low attention) to red (high)."""
    font = load_font(16)
    bar = Image.fromarray((jet(np.tile(np.linspace(0, 1, width), (16, 1))) * 255).astype(np.uint8))
    out = Image.new("RGB", (sheet.shape[1], sheet.shape[0] + 40), "white")
    out.paste(Image.fromarray(sheet), (0, 0))
    draw = ImageDraw.Draw(out)
    y = sheet.shape[0] + 10
    draw.text((8, y - 2), "attention: low", fill="black", font=font)
    out.paste(bar, (130, y))
    draw.text((140 + width, y - 2), "high", fill="black", font=font)
    return np.asarray(out)


def class_label(name: str) -> str:
    """'100' -> '100 Yuan' for the RMB data's numeric folders; any other class name as it is."""
    return f"{name} Yuan" if name.isdigit() else name


def explain(model: nn.Module, dataset, classes: list[str], mean, std, count: int = 8) -> dict:
    """Pictures of a trained model on a data set whose items are (normalised image, label).

    Returns {'gradcam': [{'image', 'overlay', 'title', 'path', 'cam', 'photo'}] for up to `count` images
    (wrong predictions first), 'input': the first image (H, W, 3), 'maps': layer -> its feature maps
    (channels, h, w) for that image, 'model', 'unreadable': photos that could not be opened again (they vanished or
    changed since they were decoded: their Grad-CAM is drawn on the decoded 32x32 image only)}.
    Everything is computed with hooks that are removed afterwards.
    """
    from tools.pictures.gradcam import gradcam, last_conv

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
                      "title": f"got {class_label(classes[predicted])},\n"
                               f"truth {class_label(classes[label])} ({probs[predicted]:.0%})"})
    first = dataset[0][0].to(device)
    return {"gradcam": items, "input": denormalize(first, mean, std), "unreadable": unreadable,
            "maps": feature_maps(model, first, MAP_LAYERS), "model": model}


def tiles_of(stack: torch.Tensor) -> list[np.ndarray]:
    """(N, h, w) or (N, 3, h, w) -> N uint8 (h, w, 3) tiles, each scaled to [0, 1] on its own."""
    stack = stack.detach().float().cpu()
    stack = stack.unsqueeze(1).expand(-1, 3, -1, -1) if stack.dim() == 3 else stack
    low = stack.amin(dim=(1, 2, 3), keepdim=True)
    span = (stack.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-12)
    return list(((stack - low) / span * 255).round().byte().permute(0, 2, 3, 1).numpy())


def labelled_sheet(title: str, rows: list[tuple[str, list[np.ndarray], list[str]]], tile: int = 56,
                   per_line: int = 8) -> np.ndarray:
    """One picture of labelled tiles, legible at TensorBoard's card size: `title` on top, then for each
    (row label, tiles, captions) a row of tiles enlarged with nearest neighbour to about `tile` pixels
    (integer factors: every pixel stays a sharp block; a tile already that big stays as it is), a
    caption above each (several lines allowed), at most `per_line` tiles to a line, in columns as wide
    as their widest tile or caption. Returns uint8 (H, W, 3)."""
    # sized for TensorBoard's card (about 450 pixels wide): the text as large as the card's own title there
    font, small = load_font(20), load_font(16)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines_of_caption = max(caption.count("\n") + 1 for _, _, captions in rows for caption in captions)
    label_width = max(100, *(measure.multiline_textbbox((0, 0), label, font=font)[2] + 16 for label, _, _ in rows))
    gap, caption_height, title_height = 6, 19 * lines_of_caption + 2, 32
    lines = []  # (label, [(caption, enlarged tile)])
    for label, images, captions in rows:
        big = [enlarge(img, max(1, tile // max(img.shape[:2]))) for img in images]
        for start in range(0, len(big), per_line):
            lines.append((label if start == 0 else "", list(zip(captions[start:start + per_line],
                                                                 big[start:start + per_line]))))
    columns = [0] * max(len(line) for _, line in lines)
    for _, line in lines:
        for k, (caption, image) in enumerate(line):
            text = measure.multiline_textbbox((0, 0), caption, font=small)[2] if caption else 0
            columns[k] = max(columns[k], image.shape[1], text)
    width = label_width + sum(c + gap for c in columns) + gap
    heights = [caption_height + max(t.shape[0] for _, t in line) + gap for _, line in lines]
    sheet = Image.new("RGB", (max(width, 11 * len(title) + 20), title_height + sum(heights)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 5), title, fill="black", font=font)
    y = title_height
    for (label, line), height in zip(lines, heights):
        draw.text((8, y + caption_height + 4), label, fill="black", font=font)
        x = label_width
        for (caption, image), column in zip(line, columns):
            draw.multiline_text((x, y), caption, fill="dimgray", font=small, spacing=1)
            sheet.paste(Image.fromarray(image), (x, y + caption_height))
            x += column + gap
        y += height
    return np.asarray(sheet)


def feature_map_sheets(visuals: dict) -> dict[str, np.ndarray]:
    """Labelled sheets of what each layer sees in the sample image, the image itself first: name -> uint8
    (H, W, 3), a sheet per layer (a card each in TensorBoard: one sheet of them all would be too tall)."""
    rows = {name: (name if len(fmap) <= MAX_MAP_CHANNELS else f"{name}\n{MAX_MAP_CHANNELS} of {len(fmap)}",
                   tiles_of(fmap[:MAX_MAP_CHANNELS]), [f"ch {k}" for k in range(min(len(fmap), MAX_MAP_CHANNELS))])
            for name, fmap in visuals["maps"].items()}
    image = ("input", [visuals["input"]], ["32x32"])  # what the layer saw, beside what it made of it
    return {name: labelled_sheet(f"{name}: each channel's map of the sample image", [image, row])
            for name, row in rows.items()}


def kernel_sheets(model: nn.Module) -> dict[str, np.ndarray]:
    """Labelled sheets of the conv layers' kernels: name -> uint8 (H, W, 3). A layer that reads RGB shows
    each kernel in colour; a deeper one, a tile per output channel, its kernels (one per input channel)
    side by side in gray, when that is at most MAX_KERNEL_TILES kernels (LeNet's conv2: 96; a ResNet's
    64x64 are left out)."""
    sheets = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        weight = module.weight.detach()                             # (out, in, k, k)
        captions = [f"out {k}" for k in range(len(weight))]
        if weight.shape[1] == 3:  # reads RGB: each kernel in colour
            sheets[name] = labelled_sheet(f"{name} kernels", [(name, tiles_of(weight), captions)], tile=40)
        elif weight.shape[0] * weight.shape[1] <= MAX_KERNEL_TILES:  # a tile per output channel, its kernels in a row
            gap = ((0, 0), (0, 1), (0, 0))
            tiles = [enlarge(np.concatenate([np.pad(t, gap, constant_values=255) for t in tiles_of(w)], axis=1), 3)
                     for w in weight]
            sheets[name] = labelled_sheet(f"{name} kernels, by output channel", [(name, tiles, captions)], tile=40,
                                          per_line=4)
    return sheets


def write_explanation(visuals: dict, out_dir: Path, writer=None, step: int = 0) -> list[Path]:
    """The pictures of `explain` as PNGs in out_dir (gradcam.png, feature_maps_<layer>.png,
    kernels_<layer>.png, each titled and labelled) and, with a writer, in TensorBoard: the Grad-CAM
    sheet, one feature-map sheet and one kernel sheet. Returns the PNG paths."""
    out_dir = Path(out_dir)
    paths = []
    sheet = gradcam_sheet(visuals["gradcam"]) if visuals["gradcam"] else None
    if sheet is not None:
        paths.append(save_png(sheet, out_dir / "gradcam.png"))
    maps, kernels = feature_map_sheets(visuals), kernel_sheets(visuals["model"])
    paths += [save_png(sheet, out_dir / f"feature_maps_{name}.png") for name, sheet in maps.items()]
    paths += [save_png(sheet, out_dir / f"kernels_{name}.png") for name, sheet in kernels.items()]
    if writer is not None:
        log_pictures(writer, visuals, step)
        if sheet is not None:
            writer.add_image(f"{PICTURES}/gradcam", sheet, step, dataformats="HWC")
    return paths


def log_pictures(writer, visuals: dict, step: int) -> None:
    """The feature maps and kernels of `explain` (or of `snapshot`) in TensorBoard: a card per layer (one
    sheet of every layer would be too tall for a card), each labelled."""
    for name, sheet in feature_map_sheets(visuals).items():
        writer.add_image(f"{PICTURES}/feature_maps_{name}", sheet, step, dataformats="HWC")
    for name, sheet in kernel_sheets(visuals["model"]).items():
        writer.add_image(f"{PICTURES}/kernels_{name}", sheet, step, dataformats="HWC")


def snapshot(model: nn.Module, image: torch.Tensor, mean, std) -> dict:
    """Input, feature maps and kernels without Grad-CAM: what train_rmb.py logs at the start."""
    return {"input": denormalize(image, mean, std), "maps": feature_maps(model, image, MAP_LAYERS), "model": model,
            "gradcam": [], "unreadable": []}
