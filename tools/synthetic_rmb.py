"""A synthetic RMB-like data set, drawn with PIL, for when no real photos are at hand.

1-yuan notes are olive green with one large "1" on the left and a round emblem in the middle; 100-yuan
notes are red with "100" top left, a portrait oval on the right and a vertical band. Scale, rotation,
position, brightness, background and noise vary, and the two base colours have overlapping brightness,
so under RandomGrayscale the network has to learn the layout, not the colour.

    python -m tools.synthetic_rmb data/RMB_synthetic     # about 1 s, 100 images per class
"""
from pathlib import Path

from tools.cli.errors import UserError
from tools.data.synthetic import IMAGES_PER_CLASS, SEED, generate


def main(args) -> Path:
    try:
        out_dir = generate(args.out_dir, args.per_class, args.seed)
    except OSError as err:
        raise UserError(f"cannot write {args.out_dir} ({err.strerror or err}); choose another folder") from None
    print(f"wrote {out_dir}")
    return out_dir

def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, folder_path, int_between, seed_value

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.synthetic_rmb")
    parser.add_argument("out_dir", type=folder_path, help="writes <out_dir>/{1,100}/*.jpg")
    parser.add_argument("--per-class", type=int_between(1, 100_000), default=IMAGES_PER_CLASS, help="images per class")
    parser.add_argument("--seed", type=seed_value, default=SEED, help="same seed, same images")
    return parser


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
