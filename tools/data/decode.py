"""Decoding images once: each file opened as RGB, resized to 32x32 (a JPEG decoded at a reduced scale),
in parallel processes for a large folder, and kept in a cache keyed by each file's content.

    images, unreadable = decode_all(paths, cache_dir=Path("data/.cache"))   # uint8 (N, 3, 32, 32), {i: why}
"""
import os
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tools.cli.errors import Stopped, UserError
from tools.data.image_cache import cache_key, cache_path, path_of, read_cache, write_cache

IMAGE_SIZE = 32  # LeNet's input is 3x32x32


def open_rgb(path: str, size: int | None = None) -> Image.Image:
    """Open an image as RGB (grayscale, 16-bit, RGBA, palette and CMYK converted).

    With `size`, a JPEG is decoded at a reduced scale that still covers size x size (much faster).
    """
    with Image.open(path) as img:
        if size is not None and img.format == "JPEG":
            img.draft("RGB", (size, size))
        img.load()
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit grayscale: 0..65535 to 0..255
            array = np.asarray(img, dtype=np.float32)
            scale = 1 / 257 if array.max() > 255 else 1.0
            img = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8))
        elif img.mode == "P":  # palette, maybe with transparency: through RGBA, as Pillow advises
            img = img.convert("RGBA")
        return img.convert("RGB")


def decode_array(path: str, size: int = IMAGE_SIZE) -> np.ndarray:
    """The image at `path` as a uint8 array (size, size, 3): the course's Resize((size, size)), once."""
    img = open_rgb(path, size).resize((size, size), Image.BILINEAR)
    return np.array(img, dtype=np.uint8)


def decode_resized(path: str, size: int = IMAGE_SIZE) -> torch.Tensor:
    """`decode_array` as a uint8 tensor (3, size, size)."""
    return torch.from_numpy(decode_array(path, size)).permute(2, 0, 1).contiguous()


def decode_into(images: np.ndarray, index: int, path: str, size: int = IMAGE_SIZE) -> str | None:
    """Decode `path` into images[index], a uint8 (3, size, size) slot; None, or the error's text. What every
    decoder runs: numpy and PIL only (torch's threads do not survive a fork)."""
    try:
        images[index] = decode_array(path, size).transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return str(err) or type(err).__name__
    return None


_share = {}  # what every decoder reads: the paths, the shared images and counters (inherited by a fork)


def _decode_share(k: int, decoders: int, size: int, progress=None) -> dict[int, str]:
    """Decoder k of `decoders`: every decoders-th photo from the k-th on (interleaved, so that large and
    small photos fall evenly to all), each into its slot; counts its photos in done[k]; returns
    {index: error text}. `progress`: called after each photo (in the main process: the bar)."""
    images, paths, done = _share["images"], _share["paths"], _share["done"]
    errors = {}
    for index in range(k, len(paths), decoders):
        error = decode_into(images, index, paths[index], size)
        if error is not None:
            errors[index] = error
        done[k] += 1
        if progress:
            progress()
    return errors


def _stop_decoding(signum, _frame) -> None:
    """SIGTERM or SIGHUP while decoding: stop through the decoders' cleanup; the command says so in one
    line and exits with the shell's code for it (tools.cli.arguments.run_script)."""
    raise Stopped(signum)


def _decoding_process(k: int, decoders: int, size: int, send) -> None:
    """What a forked decoder runs: its share, then its errors back through the pipe. A signal ends it
    as it ends any process (the parent's handler, inherited by the fork, is the parent's to run)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    send.send(_decode_share(k, decoders, size))


def decode_many(paths: list[str], size: int = IMAGE_SIZE, workers: int = 0) -> tuple[torch.Tensor, dict[int, str]]:
    """Every path decoded into one uint8 tensor (len(paths), 3, size, size) by `workers` decoders (0: one
    per core): this process and workers - 1 forked ones, each taking every workers-th photo and writing
    it straight into the tensor (shared memory: no image travels back through a pipe, and no decoder
    waits for another's chunk at the end). Returns it and {index: error text} of the unreadable ones
    (their slots are left undefined). A progress bar when it takes more than a second."""
    import multiprocessing

    from tqdm import tqdm

    workers = workers or os.cpu_count() or 1
    decoders = workers if workers > 1 and len(paths) >= 4 * workers else 1  # else forking costs more than it saves
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    done = torch.zeros(decoders, dtype=torch.int64)
    if decoders > 1:  # before the fork: the processes inherit the mappings and write into them
        images.share_memory_()
        done.share_memory_()
    _share.update(images=images.numpy(), paths=paths, done=done.numpy())
    fork = multiprocessing.get_context("fork")
    errors, children = {}, []
    with tqdm(total=len(paths), desc="decoding photos", unit="img", delay=1, leave=False) as bar:
        def progress():
            bar.update(int(done.sum()) - bar.n)

        # SIGTERM or SIGHUP (a closed terminal) while decoding: leave through the finally below, which ends
        # the decoders (their default action would kill this process alone and leave them running)
        previous = {sig: signal.signal(sig, _stop_decoding) for sig in (signal.SIGTERM, signal.SIGHUP)} \
            if decoders > 1 and threading.current_thread() is threading.main_thread() else {}
        try:
            for k in range(1, decoders):
                receive, send = fork.Pipe(duplex=False)
                child = fork.Process(target=_decoding_process, args=(k, decoders, size, send), daemon=True)
                child.start()
                send.close()  # the child's end: when the child ends, this process reads the end of the pipe
                children.append((child, receive))
            errors |= _decode_share(0, decoders, size, progress)  # this process decodes its share meanwhile
            for child, receive in children:
                while not receive.poll(0.1):
                    progress()
                try:
                    errors |= receive.recv()
                except EOFError:  # it ended without sending its errors: killed, or out of memory
                    child.join()
                    raise UserError(f"a decoding process ended without its photos (exit code {child.exitcode}); "
                                    "--workers 1 decodes in this process only") from None
                child.join()
            progress()
        finally:
            for child, _ in children:
                if child.is_alive():  # an error, Ctrl-C or a signal here: no decoder outlives the decode
                    child.terminate()
                    child.join()
            _share.clear()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return images, errors


def decode_all(paths: list[str], size: int = IMAGE_SIZE, cache_dir: Path | None = None,
               strict: bool = False, workers: int = 0) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode and resize every image once: a uint8 (3, size, size) tensor per path (None if unreadable).

    Photos not in the cache are decoded by `workers` processes (0: one per core). With `cache_dir`,
    results are kept on disk keyed by path, file size, mtime and a digest of the first and last
    kilobyte (`tools.data.image_cache.cache_key`), so a second run decodes nothing; entries of files gone or changed are
    dropped; the
    cache file is replaced atomically (safe when several processes build it). Unreadable files (zero
    bytes, truncated, not an image) are returned in the second list, or raise UserError when `strict`.
    """
    cache_file = cache_path(cache_dir, paths, size) if cache_dir and paths else None
    cache = read_cache(cache_file)
    keys = [cache_key(path) for path in paths] if cache_file else paths  # a key: a stat and 2 KB read
    missing = [index for index, key in enumerate(keys) if key not in cache]
    decoded, errors = decode_many([paths[index] for index in missing], size, workers)
    bad = []
    for position, index in enumerate(missing):
        if position in errors:
            if strict:
                raise UserError(f"cannot read image {paths[index]} ({errors[position]}); fix or remove it, "
                                "or drop --strict to skip unreadable images")
            bad.append(paths[index])
        else:
            cache[keys[index]] = decoded[position]
    if cache_file:
        # forget what is gone or changed: a file no longer there, or these paths under older keys
        now = {path_of(key) for key in keys}
        kept = {key: img for key, img in cache.items() if key in set(keys)
                or (path_of(key) not in now and os.path.exists(path_of(key)))}
        if len(missing) > len(bad) or len(kept) < len(cache):
            write_cache(kept, cache_file)
        cache = kept
    return [cache.get(key) for key in keys], bad
