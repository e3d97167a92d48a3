"""A synthetic RMB-like data set, drawn with PIL, for when no real photos are at hand.

1-yuan notes are olive green with one large "1" on the left and a round emblem in the middle; 100-yuan
notes are red with "100" top left, a portrait oval on the right and a vertical band. Scale, rotation,
position, brightness, background and noise vary, and the two base colours have overlapping brightness,
so under RandomGrayscale the network has to learn the layout, not the colour.

    python -m tools.synthetic_rmb data/RMB_synthetic     # about 1 s, 100 images per class
"""
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from tools.cli.output_folder import MANIFEST, OutputFolder

CLASSES = ("1", "100")
IMAGES_PER_CLASS = 100
SEED = 0
NOTE_SIZE = (120, 60)     # pixels, about the 2:1 shape of a banknote
CANVAS_SIZE = (128, 96)   # the photo around it
DONE_MARKER = ".complete"  # written last, so a half-written folder is never taken for a data set
LEGACY = re.compile(r"(\.complete|(1|100)/\d+\.jpg)")  # what a version before the manifest wrote


def _note(kind: str, rng: random.Random) -> Image.Image:
    """One note, RGBA, NOTE_SIZE, before it is placed on a background."""
    w, h = NOTE_SIZE
    if kind == "1":
        base = (110 + rng.randint(-20, 20), 140 + rng.randint(-20, 20), 80 + rng.randint(-20, 20))
    else:
        base = (190 + rng.randint(-25, 25), 60 + rng.randint(-20, 20), 70 + rng.randint(-20, 20))
    note = Image.new("RGBA", (w, h), base + (255,))
    draw = ImageDraw.Draw(note)
    ink = tuple(max(0, c - 90) for c in base) + (255,)
    light = tuple(min(255, c + 70) for c in base) + (255,)
    draw.rectangle([2, 2, w - 3, h - 3], outline=ink, width=2)
    if kind == "1":
        draw.text((8, 4), "1", font=ImageFont.load_default(size=46), fill=ink)
        draw.ellipse([48, 14, 80, 46], outline=ink, width=4)
        draw.ellipse([58, 24, 70, 36], fill=light)
        draw.text((92, 42), "1", font=ImageFont.load_default(size=14), fill=ink)
    else:
        draw.text((6, 4), "100", font=ImageFont.load_default(size=24), fill=ink)
        draw.rectangle([52, 6, 60, h - 7], fill=light)
        draw.ellipse([74, 8, 108, 52], fill=ink)
        draw.ellipse([82, 16, 100, 40], fill=light)
        draw.text((8, 38), "100", font=ImageFont.load_default(size=14), fill=ink)
    return note


def draw_note(kind: str, rng: random.Random) -> Image.Image:
    """A photo-like RGB image, CANVAS_SIZE, of a `kind` ('1' or '100') note on a random background."""
    note = _note(kind, rng)
    scale = rng.uniform(0.7, 1.0)
    note = note.resize((int(NOTE_SIZE[0] * scale), int(NOTE_SIZE[1] * scale)), Image.BILINEAR)
    note = note.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR, expand=True)
    background = tuple(rng.randint(40, 230) for _ in range(3))
    photo = Image.new("RGB", CANVAS_SIZE, background)
    x = rng.randint(-8, max(-8, CANVAS_SIZE[0] - note.width + 8))
    y = rng.randint(-8, max(-8, CANVAS_SIZE[1] - note.height + 8))
    photo.paste(note, (x, y), note)
    photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.6, 1.4))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(128, rng.uniform(10, 40), (*CANVAS_SIZE[::-1], 3))
    return Image.blend(photo, Image.fromarray(noise.clip(0, 255).astype(np.uint8)), rng.uniform(0.05, 0.25))


def generate(out_dir: Path, per_class: int = IMAGES_PER_CLASS, seed: int = SEED) -> Path:
    """Write out_dir/<class>/<index>.jpg for both classes; deterministic for a seed. Returns out_dir.

    out_dir must be new, empty, or a set this command wrote before (which is replaced, never merged
    into): anything else there is the user's, and the command stops (UserError) before writing. Written
    into a temporary folder first, so an interrupted run leaves nothing half done.
    """
    out_dir = Path(out_dir).resolve()
    target = OutputFolder(out_dir, "out_dir")
    target.claim_whole(also_owned=lambda name: bool(LEGACY.fullmatch(name)))  # before drawing: a quick refusal
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        rng = random.Random(seed)
        names = []
        for kind in CLASSES:
            (tmp / kind).mkdir()
            for index in range(per_class):
                draw_note(kind, rng).save(tmp / kind / f"{index:03d}.jpg", quality=90)
                names.append(f"{kind}/{index:03d}.jpg")
        # A set written before the manifest existed is ours only where its bytes are what was just drawn:
        # a stray .complete (anyone can make one) proves nothing, and a user's 1/000.jpg is kept.
        earlier = target.claim_whole(also_owned=lambda name: legacy_copy(out_dir, tmp, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    OutputFolder(tmp, "out_dir").done(names + [DONE_MARKER])
    (tmp / DONE_MARKER).touch()
    if out_dir.exists():  # only what this command wrote there (checked above): replaced, then moved in
        target.remove_earlier(earlier + [MANIFEST])
        for child in tmp.iterdir():
            os.replace(child, out_dir / child.name)
        tmp.rmdir()
    else:
        os.replace(tmp, out_dir)
    return out_dir


def legacy_copy(out_dir: Path, drawn: Path, name: str) -> bool:
    """`name` in out_dir is what a version before the manifest wrote: a note whose bytes are those just
    drawn into `drawn` for the same name, or its empty .complete marker beside such notes."""
    if not LEGACY.fullmatch(name) or (out_dir / name).is_symlink():
        return False
    if name == DONE_MARKER:
        return (out_dir / name).is_file() and (out_dir / name).stat().st_size == 0
    mine = drawn / name
    return mine.is_file() and (out_dir / name).read_bytes() == mine.read_bytes()


def is_generated(folder: Path) -> bool:
    """True when `folder` holds a complete generated data set."""
    return (Path(folder) / DONE_MARKER).is_file()
