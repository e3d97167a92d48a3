"""The split lab: the course's ways to divide a data set for validation, on a folder's images.

    python -m tools.split_lab                          # data/RMB_data, else the generated set
    python -m tools.split_lab --data-dir DIR --folds 10

Hold-out (what train_rmb.py uses: 80/10/10 per class, a fixed seed), k-fold (each image validates once, in
its fold, and trains k - 1 times), the bootstrap (n draws with replacement: about 1 - 1/e = 63.2% of the
images are drawn, the other 36.8% are left out and validate) and leave-one-out (n splits of n - 1 and 1).
Each is counted here, not trained: sizes, and the checks that make it that method.
"""
import math
import random
from pathlib import Path

BOOTSTRAP_ROUNDS = 5


def k_fold(n: int, k: int, seed: int) -> list[list[int]]:
    """k folds of the shuffled indices 0..n-1, sizes differing by at most one: fold i validates in round i."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i::k] for i in range(k)]


def bootstrap(n: int, seed: int) -> tuple[list[int], list[int]]:
    """n draws with replacement (the training set, repeats included) and the indices never drawn (valid)."""
    rng = random.Random(seed)
    drawn = [rng.randrange(n) for _ in range(n)]
    return drawn, sorted(set(range(n)) - set(drawn))


class AllBut:
    """The indices 0..n-1 but one, without a list of them: a leave-one-out training set in O(1) memory."""

    def __init__(self, n: int, left_out: int):
        self.n, self.left_out = n, left_out

    def __len__(self) -> int:
        return self.n - 1

    def __contains__(self, index) -> bool:
        return 0 <= index < self.n and index != self.left_out

    def __iter__(self):
        yield from range(self.left_out)
        yield from range(self.left_out + 1, self.n)


def leave_one_out(n: int):
    """The n splits, one at a time (all of them at once would be n x (n - 1) indices: 10,000 photos took
    4.4 GB): (all but image i, as an AllBut, train; image i validates)."""
    for i in range(n):
        yield AllBut(n, i), i


def report(samples: list, classes: list[str], folds: int, seed: int) -> list[str]:
    from tools.data.image_folder import split_samples

    n = len(samples)
    held = split_samples(samples)
    lines = [f"{n} images of classes {classes}",
             "hold-out (train_rmb.py's split, 80/10/10 per class, fixed seed): "
             + ", ".join(f"{name} {len(part)}" for name, part in held.items())]
    folds_of = k_fold(n, folds, seed)
    counted = sorted(i for fold in folds_of for i in fold)
    lines.append(f"{folds}-fold: valid sizes {[len(f) for f in folds_of]}, train sizes {[n - len(f) for f in folds_of]}; "
                 f"every image validates exactly once: {counted == list(range(n))}")
    left = []
    for r in range(BOOTSTRAP_ROUNDS):
        drawn, out = bootstrap(n, seed + r)
        left.append(len(out) / n)
        if r == 0:
            lines.append(f"bootstrap: {n} draws with replacement, {len(set(drawn))} distinct images train, "
                         f"{len(out)} left out validate ({100 * len(out) / n:.1f}%)")
    lines.append(f"  left out over {BOOTSTRAP_ROUNDS} rounds: {', '.join(f'{100 * v:.1f}%' for v in left)}; "
                 f"expected (1 - 1/n)^n = {100 * (1 - 1 / n) ** n:.1f}%, -> 1/e = {100 / math.e:.1f}% as n grows")
    count, sizes, validated = 0, set(), bytearray(n)  # streamed: counted as each split goes by
    for train, valid in leave_one_out(n):
        count, validated[valid] = count + 1, validated[valid] + 1
        sizes.add(len(train))
    lines.append(f"leave-one-out: {count} splits of {', '.join(map(str, sorted(sizes)))} train and 1 valid; "
                 f"each image validates once: {count == n and validated.count(1) == n}")
    return lines


def get_args_parser():
    """The command's flags."""
    from tools.cli.arguments import ArgumentParser, int_between, seed_value

    parser = ArgumentParser(description=__doc__.splitlines()[0], prog="python -m tools.split_lab")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="<dir>/<class>/<image>; default data/RMB_data, else the generated set")
    parser.add_argument("--folds", type=int_between(2, 1000), default=5, help="k of k-fold")
    parser.add_argument("--seed", type=seed_value, default=1, help="seed of the shuffles and draws")
    return parser


def main(args) -> list[str]:
    from tools.cli.arguments import REPO_ROOT
    from tools.cli.errors import UserError
    from tools.data.image_folder import default_data_dir, find_classes, list_samples

    folder = args.data_dir
    if folder is None:
        folder, note = default_data_dir(REPO_ROOT / "data")
        if note:
            print(note)
    if any((Path(folder) / name).is_dir() for name in ("train", "valid", "val", "validation", "test")):
        raise UserError(f"{folder} is split already (it has train/, valid/ or test/): pass the raw <class>/<image> "
                        "folder, which this lab divides each way")
    classes = find_classes(folder)
    samples, _ = list_samples(folder, classes)
    if args.folds > len(samples):
        raise UserError(f"--folds {args.folds}: more folds than the {len(samples)} images of {folder}")
    lines = report(samples, classes, args.folds, args.seed)
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    from tools.cli.arguments import run_script

    run_script(main, get_args_parser())
