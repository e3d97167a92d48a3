"""Writing into a folder without losing or merging into what a user has there: the one owner of that rule
for every command that writes outside a run folder (synthetic_rmb, rmb_dataset --out, readme_pictures,
inspect_run --out, tb_screenshots --out).

A command writes into a new or empty folder, or over files it can prove it wrote itself: each folder it
writes keeps a manifest (MANIFEST, one relative path a line) of what it wrote there. Anything else in
the way is the user's: the command stops with one line (UserError, exit 2) before it writes anything.

    out = OutputFolder(path, "--out")
    out.claim(["a.png", "b.png"])                 # files it will write (others in the folder are left alone)
    ... write them ...
    out.done(["a.png", "b.png"])                  # recorded as its own

    out.claim_whole()                             # a data set: the folder must hold only what it wrote before
"""
import os
import stat
import tempfile
from pathlib import Path

from tools.cli.errors import UserError

MANIFEST = ".written-by-rmb-monitor"


def lies_within(path, folder) -> bool:
    """`path` is `folder` or below it, links resolved: what a command writes there would be read with it."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


class OutputFolder:
    """A folder a command writes into; `flag` names it in messages ('--out', 'out_dir')."""

    def __init__(self, folder: Path, flag: str):
        self.folder, self.flag = Path(folder), flag
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{flag} {self.folder} is a file, not a folder: choose a folder (a new one is made)")
        below = next((p for p in self.folder.parents if p.exists() and not p.is_dir()), None)
        if below is not None:  # mkdir would say "File exists" or "Not a directory"
            raise UserError(f"{flag} {self.folder} lies below {below}, which is a file, not a folder: choose "
                            "another folder")

    def owned(self) -> set[str]:
        """The relative paths this project's commands wrote here before (its manifest). A manifest that is
        a link (to a file anywhere) is no manifest: anyone can plant one; it is never read through. Nor is
        one owned by another user, or one that others may write (this project writes it 0600)."""
        try:
            fd = os.open(self.folder / MANIFEST, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # none, a link (ELOOP), unreadable
            return set()
        try:
            with os.fdopen(fd) as manifest:
                info = os.fstat(manifest.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                    return set()  # not a file, or another user's, or one others may write: not this user's word
                return {line for line in manifest.read().splitlines() if line and ".." not in Path(line).parts}
        except (OSError, UnicodeDecodeError):
            return set()

    def write_manifest(self, names) -> None:
        """The manifest, written to a new file and renamed over the old path: never through a link planted
        there (the rename replaces the link itself, not what it points to)."""
        manifest = self.folder / MANIFEST
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{MANIFEST}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write("".join(f"{n}\n" for n in sorted(names)))
            os.replace(tmp, manifest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def contents(self) -> list[str]:
        """Every file (and link) under the folder, as relative paths, but the manifest."""
        if not self.folder.is_dir():
            return []
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*")
                      if (p.is_file() or p.is_symlink()) and not p.name.startswith(MANIFEST))  # and its temp files

    def claim(self, names: list[str]) -> None:
        """Before writing `names` (relative paths): none of them may be a file it did not write."""
        owned = self.owned()
        # a link is never ours, whatever the manifest says: writing it would write where it points
        foreign = [n for n in names if (self.folder / n).is_symlink() or (self.folder / n).exists() and n not in owned]
        if foreign:
            raise UserError(f"{self.flag} {self.folder} already has {foreign[0]}" + (f" and {len(foreign) - 1} more file(s)"
                            if len(foreign) > 1 else "") + ", which this command did not write: it never overwrites "
                            "them. Choose a new or empty folder, or move them away")

    def claim_patterns(self, patterns: list[str], also_owned=lambda name: False) -> None:
        """Before writing files whose names are known only by pattern ('gradcam_*.png'): no file of the
        folder that matches one may be a file this project did not write."""
        from fnmatch import fnmatch

        owned = self.owned()
        self.claim([n for n in self.contents() if any(fnmatch(n, p) for p in patterns)
                    and n not in owned and not also_owned(n)])

    def claim_whole(self, also_owned=lambda name: False) -> list[str]:
        """Before writing a whole data set: the folder is new, empty, or holds only what was written here
        before (which the caller replaces, never merges into). Returns those earlier files. `also_owned`:
        names the command recognises as its own without a manifest (what an earlier version wrote)."""
        owned, present = self.owned(), self.contents()
        foreign = [n for n in present if (n not in owned or (self.folder / n).is_symlink()) and not also_owned(n)]
        if foreign:
            raise UserError(f"{self.flag} {self.folder} already holds {len(foreign)} file(s) this command did not write "
                            f"(such as {foreign[0]}): it writes only into a new or empty folder, or one it wrote "
                            "before. Choose another folder")
        return present

    def remove_earlier(self, earlier: list[str]) -> None:
        """Remove the files written here before (all of them: the new set replaces the old, never merges),
        and the folders they leave empty."""
        kept = self.owned() - set(earlier)
        for name in earlier:
            (self.folder / name).unlink(missing_ok=True)
        if (self.folder / MANIFEST).exists() or (self.folder / MANIFEST).is_symlink():
            self.write_manifest(kept)
        for folder in sorted({p for n in earlier for p in (self.folder / n).parents if self.folder in p.parents},
                             key=lambda p: len(p.parts), reverse=True):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def done(self, names: list[str]) -> None:
        """Record `names` (relative paths) as written here by this project."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.write_manifest(self.owned() | set(names))
