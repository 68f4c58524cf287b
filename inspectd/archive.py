"""Archive stage: after a batch is committed, each file moves to where its row says it went.

Destinations are dated folders (``<root>/YYYY-MM-DD/<name>``), never overwritten: a name already taken
gets the content hash appended. Files are linked into place and unlinked from incoming (one filesystem,
``move``); across filesystems they are copied, flushed, renamed into place, and only then removed from
incoming. Nothing is deleted.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from datetime import datetime
from pathlib import Path


def plan(root: Path, when: datetime, name: str, sha256: str, taken: set[Path]) -> Path:
    """A free destination for ``name`` in today's folder; ``taken`` holds those planned in this batch."""
    folder = root / when.strftime("%Y-%m-%d")
    dest = folder / name
    if dest in taken or _occupied(dest):
        stem, dot, suffix = name.rpartition(".")
        dest = folder / (f"{stem}.{sha256[:12]}.{suffix}" if dot else f"{name}.{sha256[:12]}")
        n = 1
        while dest in taken or _occupied(dest):
            dest = folder / f"{dest.name}.{n}"
            n += 1
    taken.add(dest)
    return dest


def move(src: Path, dest: Path) -> None:
    """Move without ever overwriting; raises OSError (the file then stays where it was).

    On one filesystem a file is hard-linked at its destination, then unlinked from incoming: ``link``
    refuses a taken destination atomically, and incoming sees a delete, not a move (watchdog holds each
    move out of a watched folder 0.5 s at the head of its event queue, delaying every event behind it). A
    crash between the two leaves both names on one inode: moving that file again finds its destination is
    already that file and only unlinks incoming. Directories, and filesystems without hard links, are
    renamed; across filesystems the file is copied, flushed, renamed into place, then removed.
    """
    try:
        _link(src, dest)
    except FileExistsError:
        if not same_file(src, dest):
            raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _copy(src, dest)
        elif exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):  # a directory; no hard links
            _rename(src, dest)
        else:
            raise
        return
    src.unlink()


def _link(src: Path, dest: Path) -> None:
    """``link``, creating the destination's folder when it is missing (the first file of a day): one
    call per file, not a ``mkdir`` before each."""
    try:
        os.link(src, dest, follow_symlinks=False)
    except FileNotFoundError:
        if not os.path.lexists(src):  # the source is gone, not the folder
            raise
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, dest, follow_symlinks=False)


def _occupied(path: Path) -> bool:
    """Something is at ``path``: a file, a directory, or a link (a dangling one too)."""
    return os.path.lexists(path)


def same_file(a: Path, b: Path) -> bool:
    """Both names are one inode (the names themselves: links not followed)."""
    try:
        sa, sb = a.lstat(), b.lstat()
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _rename(src: Path, dest: Path) -> None:
    if _occupied(dest):
        raise FileExistsError(f"{dest} already exists")
    src.replace(dest)


def _copy(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.inspectd-tmp")
    directory = src.is_dir() and not src.is_symlink()
    try:
        if directory:
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
            if not tmp.is_symlink():
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
        if _occupied(dest):
            raise FileExistsError(f"{dest} already exists")
        tmp.replace(dest)
    except OSError:
        _remove(tmp)  # a partial copy (disk full): the original is still in incoming
        raise
    if directory:
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
