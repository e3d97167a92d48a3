"""The decoded-image cache of a data folder: one file of uint8 images keyed by each photo's path, size,
time and a digest of its first and last kilobyte, with a digest of its own contents. A photo replaced
under the same name (cp -p, rsync -t) is decoded again; a cache damaged, of another version or of
another image size is rebuilt, with a warning; a cache that cannot be written costs only itself."""
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

FINGERPRINT_BYTES = 1024  # the cache key reads a file's first and last kilobyte: a photo replaced by another
                          # of the same size with its time restored (cp -p, rsync -t) is seen as changed


def cache_key(path: str) -> str:
    """path|size|mtime|a BLAKE2b digest of the first and last FINGERPRINT_BYTES of its content, and of the
    file's inode and change time (ctime): a byte changed in its middle, the modification time then set
    back (touch -d, cp -p and rsync -t can), still moves the ctime, which no user can set. A copy or a
    chmod moves it too: the photo is decoded again, once."""
    stat = os.stat(path)
    with open(path, "rb") as f:
        head = f.read(FINGERPRINT_BYTES)
        if stat.st_size > 2 * FINGERPRINT_BYTES:
            f.seek(-FINGERPRINT_BYTES, os.SEEK_END)
        tail = f.read(FINGERPRINT_BYTES)
    digest = hashlib.blake2b(head + tail + f"{stat.st_ino}|{stat.st_ctime_ns}".encode(), digest_size=8).hexdigest()
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{digest}"


def path_of(key: str) -> str:
    return key.rsplit("|", 3)[0]


def cache_path(cache_dir: Path, paths: list[str], size: int) -> Path:
    """The cache file of one data folder (the photos' common folder): images_<size>px_<digest>.pt, so
    that a run reads only its own photos' decoded images."""
    folder = os.path.commonpath([os.path.abspath(p) for p in paths])
    return Path(cache_dir) / f"images_{size}px_{hashlib.sha1(folder.encode()).hexdigest()[:12]}.pt"


def _images_digest(keys: list[str], images: torch.Tensor) -> str:
    """A BLAKE2b digest of the cache's keys and images: a byte changed on disk is seen (torch.load does
    not check its archive's checksums), and the cache is rebuilt. 30 ms for 8000 images."""
    digest = hashlib.blake2b("\n".join(keys).encode(), digest_size=16)
    digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_cache(cache_file: Path | None) -> dict:
    """key -> uint8 image (views of one tensor), from `write_cache`'s file; {} when there is none, or
    it is of another version or damaged (it is then rebuilt)."""
    if not cache_file or not cache_file.is_file():
        return {}
    try:
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        keys, images = saved["keys"], saved["images"]
        size = int(cache_file.name.split("_")[1].removesuffix("px"))
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
                and tuple(images.shape[1:]) == (3, size, size) and isinstance(keys, list) and len(keys) == len(images)
                and all(isinstance(k, str) for k in keys) and saved.get("digest") == _images_digest(keys, images)):
            raise ValueError("not this version's images, or bytes changed")
        return dict(zip(keys, images))
    except Exception:  # noqa: BLE001 - damaged, of another version or size: rebuilt, never a traceback
        warnings.warn(f"the image cache {cache_file} is damaged or of another version: it is rebuilt", stacklevel=2)
        return {}


def write_cache(cache: dict, cache_file: Path) -> None:
    """torch.save the decoded images atomically (a temporary file, then a rename), as one tensor and
    their keys (one tensor loads much faster than thousands). A folder that cannot be written or a full
    disk costs only the cache: a warning, and the run goes on."""
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            keys, images = list(cache), torch.stack(list(cache.values()))
            torch.save({"keys": keys, "images": images, "digest": _images_digest(keys, images)}, f)
        os.replace(tmp, cache_file)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError of its zip writer
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        warnings.warn(f"cannot write the image cache {cache_file} ({reason}); going on without it "
                      "(pass --cache-dir '' for none, or a writable folder)", stacklevel=2)
