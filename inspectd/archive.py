"""Archive stage: after a batch is committed, each file moves to where its row says it went.

Destinations are dated folders (``<root>/YYYY-MM-DD/<name>``), never overwritten: a name already taken
gets the content hash appended. Files are renamed (atomic on one filesystem); across filesystems they
are copied, flushed, renamed into place, and only then removed from incoming. Nothing is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path


def plan(root: Path, when: datetime, name: str, sha256: str, taken: set[Path]) -> Path:
    """A free destination for ``name`` in today's folder; ``taken`` holds those planned in this batch."""
    folder = root / when.strftime("%Y-%m-%d")
    dest = folder / name
    if dest in taken or dest.exists() or dest.is_symlink():
        stem, dot, suffix = name.rpartition(".")
        dest = folder / (f"{stem}.{sha256[:12]}.{suffix}" if dot else f"{name}.{sha256[:12]}")
        n = 1
        while dest in taken or dest.exists() or dest.is_symlink():
            dest = folder / f"{dest.name}.{n}"
            n += 1
    taken.add(dest)
    return dest


def move(src: Path, dest: Path) -> None:
    """Move without ever overwriting; raises OSError (the file then stays where it was)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists")
    try:
        src.replace(dest)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: another filesystem
            raise
        tmp = dest.with_name(f".{dest.name}.inspectd-tmp")
        try:
            if src.is_dir() and not src.is_symlink():
                shutil.copytree(src, tmp, symlinks=True)
            else:
                shutil.copy2(src, tmp, follow_symlinks=False)
                if not tmp.is_symlink():
                    with tmp.open("rb") as fh:
                        os.fsync(fh.fileno())
            tmp.replace(dest)
        except OSError:
            _remove(tmp)  # a partial copy (disk full): the original is still in incoming
            raise
        if src.is_dir() and not src.is_symlink():
            shutil.rmtree(src)
        else:
            src.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_reason(dest: Path, reason: str, detail: str) -> None:
    """A note beside a quarantined file, for whoever opens the folder."""
    note = dest.with_name(dest.name + ".reason.json")
    note.write_text(json.dumps({"file": dest.name, "reason": reason, "detail": detail}) + "\n")
