"""Write a raw <class>/<image> folder's 80/10/10 split to disk, as the course does (finding the split,
decoding and the data set itself live in `tools.data.image_folder`):

    python -m tools.rmb_dataset data/RMB_data --out data/rmb_split
    python -m tools.rmb_dataset data/RMB_data --out data/rmb_split --index   # and train.txt, valid.txt, test.txt

--index also writes the course's txt index: <out>/<split>.txt, one line per image, its path relative to
<out> and its class index ("train/100/0A2K.jpg 1"); `tools.data.course_pipeline.TxtIndexDataset` reads it.
"""
from pathlib import Path

from tools.cli.errors import UserError
from tools.data.image_folder import SPLIT_SEED, find_splits


def write_split(data_dir: Path, out_dir: Path, seed: int = SPLIT_SEED, index: bool = False) -> dict[str, int]:
    """Copy a raw <class>/<image> folder's split to out_dir/{train,valid,test}/<class>/; counts per split.
    `index`: also out_dir/<split>.txt, a line "<path relative to out_dir> <class index>" per image.

    out_dir must be new, empty, or a split this command wrote before: that one is replaced, never merged
    into (a second split with another seed would put valid images in train); anything else there is the
    user's, and nothing is written (UserError)."""
    import shutil

    from tools.cli.output_folder import OutputFolder, lies_within

    classes, splits, _ = find_splits(data_dir, seed)
    out = OutputFolder(out_dir, "--out")
    if lies_within(out_dir, data_dir):
        raise UserError(f"--out {out_dir} is inside the data folder {data_dir}: its copies would be read as images "
                        "of a class. Choose a folder outside it")
    earlier = out.claim_whole()
    out.remove_earlier(earlier)
    counts, written = {}, []
    for name, samples in splits.items():
        lines = []
        for path, label in samples:
            target = Path(out_dir) / name / classes[label]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / Path(path).name)
            written.append(f"{name}/{classes[label]}/{Path(path).name}")
            lines.append(f"{written[-1]} {label}\n")
        if index:
            (Path(out_dir) / f"{name}.txt").write_text("".join(lines))
            written.append(f"{name}.txt")
        counts[name] = len(samples)
    out.done(written)
    return counts


def main(args) -> dict[str, int]:
    try:
        counts = write_split(args.data_dir, args.out, args.seed, args.index)
    except OSError as err:
        raise UserError(f"cannot write the split into --out {args.out} ({err.strerror or err}); choose "
                        "another folder") from None
    print(f"wrote {counts['train']} train, {counts['valid']} valid, {counts['test']} test images to {args.out}")
    if args.index:
        print(f"and the txt index {args.out}/train.txt, valid.txt and test.txt (a line per image: its path and class "
              "index), read by tools.data.course_pipeline.TxtIndexDataset")
    return counts

def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, folder_path, seed_value

    parser = ArgumentParser(description="Write the train/valid/test split of a <class>/<image> folder.",
                            prog="python -m tools.rmb_dataset")
    parser.add_argument("data_dir", type=folder_path, help="raw folder: <data_dir>/<class>/<image>")
    parser.add_argument("--out", type=folder_path, default=Path(__file__).resolve().parents[1] / "data" / "rmb_split",
                        help="where the split goes: <out>/{train,valid,test}/<class>/")
    parser.add_argument("--seed", type=seed_value, default=SPLIT_SEED, help="seed of the shuffle before splitting")
    parser.add_argument("--index", action="store_true",
                        help="also write the course's txt index: <out>/train.txt, valid.txt, test.txt")
    return parser


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
