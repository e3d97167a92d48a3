"""Explain a saved run: confusion matrix, Grad-CAM overlays, feature maps and kernels of its best checkpoint.

    python -m tools.inspect_run runs/20261125-101500_lenet                 # PNGs into <run>/inspect/
    python -m tools.inspect_run runs/20261125-101500_lenet --image note.jpg  # predict and explain one photo
"""
import json
from pathlib import Path

import torch
from torch import nn

from model import CLASSIFIERS
from tools.cli.arguments import ArgumentParser, run_script, select_device
from tools.cli.errors import UserError
from tools.cli.output_folder import OutputFolder
from tools.data.decode import decode_resized
from tools.data.image_folder import Normalized, RMBDataset, find_splits
from tools.pictures.gradcam import gradcam, last_conv
from tools.pictures.visualize import class_label, denormalize, gradcam_sheet, overlay, overlay_on_photo, save_png
from tools.training.checkpoint import load_checkpoint, load_model_state
from tools.training.report import report
from tools.training.run_dirs import check_writable


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.inspect_run")
    parser.add_argument("run_dir", type=Path, help="a run folder written by train_rmb.py")
    parser.add_argument("--image", type=Path, default=None, help="predict and explain this image file only")
    parser.add_argument("--data-dir", type=Path, default=None, help="the data to explain (default: the run's)")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default: <run_dir>/inspect)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    return parser


def load_run(run_dir: Path, device: torch.device):
    """(model in eval mode, checkpoint) from the run's best checkpoint (its last if there is no best)."""
    path = next((run_dir / n for n in ("checkpoint_best.pt", "checkpoint_last.pt") if (run_dir / n).is_file()), None)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint_best.pt or checkpoint_last.pt; pass a run folder of train_rmb.py")
    checkpoint = load_checkpoint(path, required=("model", "classes", "norm", "args"))
    model = CLASSIFIERS[checkpoint.get("model_class", "LeNet")](classes=len(checkpoint["classes"]))
    load_model_state(model, checkpoint["model"], path)
    return model.to(device).eval(), checkpoint


def explain_image(model: nn.Module, checkpoint: dict, image_path: Path, out_dir: Path) -> dict:
    """Prediction, class probabilities and a Grad-CAM panel (PNG) for one image file."""
    if not image_path.is_file():
        raise UserError(f"--image {image_path} does not exist")
    try:
        pixels = decode_resized(str(image_path))
    except (OSError, ValueError, SyntaxError) as err:
        raise UserError(f"--image {image_path} cannot be read as an image ({err})") from None
    mean, std = checkpoint["norm"]["mean"], checkpoint["norm"]["std"]
    image = Normalized(mean, std)(pixels).to(next(model.parameters()).device)
    cam, predicted, probs = gradcam(model, last_conv(model), image)
    classes = checkpoint["classes"]
    rgb = denormalize(image, mean, std)
    title = f"{type(model).__name__} got {class_label(classes[predicted])} ({probs[predicted]:.0%})"
    sheet = gradcam_sheet([{"image": rgb, "overlay": overlay(rgb, cam), "title": title,
                            "photo": overlay_on_photo(str(image_path), cam)}])
    path = save_png(sheet, out_dir / f"gradcam_{image_path.stem}.png")
    return {"prediction": classes[predicted], "probabilities": dict(zip(classes, probs.tolist())), "png": str(path)}


PICTURES = ["confusion_*.png", "gradcam*.png", "feature_maps_*.png", "kernels_*.png", "inspect.json"]  # what it writes


def main(args) -> dict:
    device = select_device(args.device)
    if not args.run_dir.is_dir():
        raise UserError(f"run folder {args.run_dir} does not exist")
    model, checkpoint = load_run(args.run_dir, device)
    out_dir = check_writable(args.out or args.run_dir / "inspect", "--out")
    out = OutputFolder(out_dir, "--out")  # never over a file it did not write (its own default folder aside)
    out.claim_patterns(PICTURES, also_owned=lambda name: args.out is None)
    if args.image:
        result = explain_image(model, checkpoint, args.image, out_dir)
        out.done([Path(result["png"]).name])
        odds = ", ".join(f"{class_label(c)} {p:.1%}" for c, p in result["probabilities"].items())
        print(f"{args.image}: {class_label(result['prediction'])} ({odds})\nGrad-CAM in {result['png']}")
        return result

    data_dir = args.data_dir or (Path(checkpoint["args"]["data_dir"]) if checkpoint["args"].get("data_dir") else None)
    if data_dir is None:
        from tools.cli.arguments import REPO_ROOT
        from tools.data.image_folder import default_data_dir
        data_dir = default_data_dir(REPO_ROOT / "data")[0]
    classes, splits, _ = find_splits(data_dir)
    if classes != checkpoint["classes"]:
        raise UserError(f"{data_dir} has classes {classes}, the run was trained on {checkpoint['classes']}")
    # a folder you name: every image in it, whatever its layout; the run's own data: its held-out test split
    split = "all" if args.data_dir else "test" if splits["test"] else "valid"
    samples = [s for part in splits.values() for s in part] if args.data_dir else splits[split]
    mean, std = checkpoint["norm"]["mean"], checkpoint["norm"]["std"]
    dataset = RMBDataset(samples=samples, classes=classes, transform=Normalized(mean, std))
    data = {"classes": classes, "mean": mean, "std": std, split: dataset}
    result = report(model, data, split, device, out_dir, title=f"{split} {len(dataset)} images, {args.run_dir.name}")
    paths = [Path(p) for p in result["pngs"]]
    (out_dir / "inspect.json").write_text(json.dumps(result, indent=2) + "\n")
    out.done([p.name for p in paths] + ["inspect.json"])
    print(f"accuracy {result['acc']:.2%} on {'all ' if args.data_dir else 'the ' + split + ' split, '}"
          f"{len(dataset)} images of {data_dir}")
    print(f"confusion (rows true {classes}, columns predicted):\n{torch.tensor(result['confusion']).numpy()}")
    print("worst predicted (lowest probability of the true class):")
    for item in result["worst"]:
        verdict = ("right" if item["predicted"] == item["truth"] else f"taken for {class_label(item['predicted'])}")
        print(f"  {item['probability']:6.1%} {class_label(item['truth'])}, {verdict}: "
              f"{item['path']}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    print(f"pictures in {out_dir}: " + ", ".join(p.name for p in paths))
    return result


if __name__ == "__main__":
    run_script(main, get_args_parser())
