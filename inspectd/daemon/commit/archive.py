"""Archive stage: after a batch is committed, each file moves to where its row says it went.

Destinations are dated folders (``<root>/YYYY-MM-DD/<name>``), never overwritten: a name already taken
gets the content hash (then a random tag: one look, however often the same frame comes) inserted before
its extension, and every derived name is cut to
fit the filesystem's 255 bytes. Names that are not UTF-8 are stored with their odd bytes escaped
(``bad\\xff.png``), so the row's ``stored_path`` names the archived file exactly.

A file is moved by its identity, not its name (``take``): the name in incoming is first renamed to a
private hidden name beside it (atomic: whatever a writer renames over the name afterwards stays there,
untouched), and only if that inode is the one that was read is it linked into place and unlinked. If a
writer had replaced the file meanwhile, the replacement is put back under its name (a new candidate) and
the bytes that were read are copied into place from the descriptor the decode stage kept open. Across
filesystems a regular file is copied, flushed and linked into place; a directory or special file is never
copied (it can be of any size or depth): the pipeline quarantines it in ``<incoming>/.quarantine/``, on
its own filesystem.
Nothing is deleted.

(Over 300 lines on purpose: every rename, link and copy rule of the archive in one place, reviewed
together; move.py decides when they run.)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from inspectd.core.records import FileId

NAME_MAX = 255
STAGING_SUFFIX = ".inspectd-taking"
ALIVE_SUFFIX = ".inspectd-alive"  # ``.<token>.inspectd-alive``: touched while that daemon runs (leases.py)
PRIVATE_SUFFIXES = (STAGING_SUFFIX, ALIVE_SUFFIX)  # never candidates, whatever ``[watch] ignore`` says
LOCAL_QUARANTINE = ".quarantine"  # in incoming: what cannot be copied to another filesystem


def safe_name(name: str) -> str:
    """The name as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` (a database takes it)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def fit(stem: str, tail: str = "") -> str:
    """``stem + tail``, the stem shortened (by whole characters) until the name fits in NAME_MAX bytes."""
    room = NAME_MAX - len(os.fsencode(tail))
    encoded = os.fsencode(stem)
    if len(encoded) > room:
        stem = encoded[:room].decode("utf-8", "ignore")
    return stem + tail


def _split(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return (stem, f".{suffix}") if dot and stem and len(suffix) <= 16 else (name, "")


def plan(
    root: Path,
    when: datetime,
    name: str,
    sha256: str,
    taken: set[Path],
    occupied: Callable[[Path], bool] | None = None,
    token: Callable[[], str] | None = None,
) -> Path:
    """A free destination for ``name`` in the day's folder; ``taken`` holds those planned in this batch.
    ``occupied`` and ``token`` (the filesystem and a random tag) are arguments for the pure plan's tests."""
    occupied = occupied or _occupied
    token = token or (lambda: secrets.token_hex(3))
    folder = root / when.strftime("%Y-%m-%d")
    stem, ext = _split(safe_name(name))
    dest = folder / fit(stem, ext)
    tag = f".{sha256[:12]}"
    while dest in taken or occupied(dest):
        dest = folder / fit(stem, tag + ext)
        tag = f".{sha256[:12]}.{token()}"  # taken again (the same frame, again and again)
    taken.add(dest)
    return dest


@dataclass(frozen=True, slots=True)
class Taken:
    """How a file reached its destination: ``replaced`` when a writer had swapped the name meanwhile (the
    bytes read were written from the open descriptor, and the new file is back in incoming)."""

    dest: Path
    replaced: bool = False
    copied: bool = False  # gone from incoming: written from the descriptor


@dataclass(frozen=True, slots=True)
class Staged:
    """A file taken away from its name in incoming, before its row is committed: ``path`` is its private
    name (None when the name was gone, or held another file: ``replaced``, put back at once)."""

    src: Path
    path: Path | None
    replaced: bool = False
    st: os.stat_result | None = None


def stage(src: Path, expected: FileId | None, token: str) -> Staged:
    """Rename ``src`` to this daemon's private name beside it (atomic: a writer renaming a new file over
    the name, or opening it anew, no longer reaches this one), and check it is the inode that was read.
    Raises OSError when it cannot (a read-only or append-only incoming)."""
    try:
        staged = _stage(src, token)
    except FileNotFoundError:
        return Staged(src, None)
    st = staged.lstat()
    if expected is not None and not expected.same_inode(st):
        _unstage(staged, src)  # another file: back under its name, a new candidate
        return Staged(src, None, replaced=True)
    return Staged(src, staged, st=st)


def unstage(staged: Staged) -> None:
    """Give a staged file its name back (its row was not committed after all)."""
    if staged.path is not None:
        _unstage(staged.path, staged.src)


def place(staged: Staged, dest: Path, fd: int | None, keep_bytes: bool = False) -> Taken:
    """Put a staged file at ``dest``, never overwriting; raises OSError when it cannot (the file then goes
    back under its name in incoming).

    ``fd``: the open descriptor of the file that was read. A file replaced under its name is written from
    it; so is, with ``keep_bytes`` (its row was just recorded), a file gone from incoming meanwhile
    (deleted, or renamed to another name), so that its row never points at nothing.
    """
    if staged.path is None:
        if fd is None or not (staged.replaced or keep_bytes):
            raise FileNotFoundError(errno.ENOENT, "gone before it could be moved", str(staged.src))
        copy_from(fd, dest)
        return Taken(dest, replaced=staged.replaced, copied=not staged.replaced)
    assert staged.st is not None
    try:
        _place(staged.path, dest, staged.st)
    except BaseException:
        _unstage(staged.path, staged.src)
        raise
    return Taken(dest)


def take(
    src: Path,
    dest: Path,
    expected: FileId | None,
    fd: int | None,
    token: str = "0" * 8,
    keep_bytes: bool = False,
) -> Taken:
    """``stage`` then ``place``: move the file that was read from ``src`` to ``dest``.

    ``expected``/``fd``: the identity and the open descriptor of the file that was read (None for things
    that were never opened: links, folders). Without them the name is moved as it is.
    """
    return place(stage(src, expected, token), dest, fd, keep_bytes)


def _stage(src: Path, token: str) -> Path:
    # FileNotFoundError: the file is gone; EACCES/EROFS: incoming is read-only (nothing is copied then)
    return src.rename(src.with_name(staging_name(src.name, token)))


def staging_name(name: str, token: str) -> str:
    """``.<name>.<token>.inspectd-taking``: the token is this daemon's own (``token_for``), so two daemons
    on one shared folder never rename onto each other's private name (a long name is replaced by its
    hash)."""
    tail = f".{token}{STAGING_SUFFIX}"
    if 1 + len(os.fsencode(name)) + len(tail) <= NAME_MAX:
        return f".{name}{tail}"
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".inspectd-long-{digest}{_split(safe_name(name))[1]}{tail}"


def _unstage(staged: Path, src: Path) -> None:
    """Put a staged file back under its name in incoming, or beside it when that name is taken again."""
    if not os.path.lexists(staged):
        return
    restore_name = src.name
    for n in range(1000):
        target = src.with_name(restore_name)
        try:
            if staged.is_dir() and not staged.is_symlink():
                _rename_noreplace(staged, target)
                return
            os.link(staged, target, follow_symlinks=False)
        except FileExistsError:
            stem, ext = _split(safe_name(src.name))
            restore_name = fit(stem, f".restored-{n + 1}{ext}")
            continue
        staged.unlink()
        return


_STAGED = re.compile(r"^\.(?P<name>.+)\.(?P<token>[0-9a-f]{8})" + re.escape(STAGING_SUFFIX) + "$", re.DOTALL)


def token_for(owner: str) -> str:
    """The private names' token of one daemon (its station name): a restart finds its own names."""
    return hashlib.sha256(owner.encode()).hexdigest()[:8]


def alive_name(token: str) -> str:
    return f".{token}{ALIVE_SUFFIX}"


def mark_alive(folder: Path, token: str) -> None:
    """This daemon still runs: its staged files are in flight, not a crash's leftovers (OSError when the
    folder cannot be written)."""
    (folder / alive_name(token)).touch()


def folder_time(folder: Path, token: str) -> float:
    """Now, by the clock of the folder's file server (this daemon's mark, touched and read back), so that
    ages of other daemons' files and marks on a network share are measured by the clock that stamped
    them, not by this machine's, which may be off; this machine's clock when the mark cannot be
    written."""
    try:
        mark_alive(folder, token)
        return (folder / alive_name(token)).stat().st_mtime
    except OSError:
        return time.time()


def clear_alive(folder: Path, token: str) -> None:
    with contextlib.suppress(OSError):
        (folder / alive_name(token)).unlink(missing_ok=True)


def _last_alive(folder: Path, token: str) -> float:
    try:
        return (folder / alive_name(token)).stat().st_mtime
    except OSError:
        return 0.0


def recover_staged(
    folder: Path, token: str, stale_after_s: float, own: bool = True, now: float | None = None
) -> list[Path]:
    """Files left under a private name in incoming go back under a visible one: this daemon's own at its
    start (``own``: a crash left them), and other daemons' once staged longer than ``stale_after_s``
    (a shared folder's lease: that daemon crashed; the rename that staged a file set its ctime) and not
    marked alive for as long (``mark_alive``: it is alive, only slow, e.g. waiting out a database outage).
    A name that does not parse exactly is left alone; an entry that cannot be restored now is skipped.
    """
    restored: list[Path] = []
    alive: dict[str, float] = {}
    now = time.time() if now is None else now
    try:
        entries = [e for e in os.scandir(folder) if e.name.endswith(STAGING_SUFFIX)]
    except OSError:
        return restored
    for entry in entries:
        match = _STAGED.match(entry.name)
        name = match["name"] if match else ""
        if not match or name in (".", "..") or "/" in name:
            continue
        try:
            if match["token"] == token:
                if not own:
                    continue
            else:
                other = match["token"]
                if other not in alive:
                    alive[other] = _last_alive(folder, other)
                since = max(entry.stat(follow_symlinks=False).st_ctime, alive[other])
                if now - since < stale_after_s:
                    continue
            original = folder / name  # a long name was replaced by inspectd-long-<hash>.ext
            _unstage(Path(entry.path), original)
        except OSError:
            continue  # gone meanwhile (its owner finished), or not restorable now: the next start tries
        restored.append(original)
    return restored


def _place(staged: Path, dest: Path, st: os.stat_result) -> None:
    """Link (or, for folders and across filesystems, move or copy) the staged file to ``dest``."""
    try:
        _link(staged, dest)
    except FileExistsError:
        if not same_file(staged, dest):
            raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            _across(staged, dest, st)
            return
        if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):  # a directory; no hard links
            _rename_noreplace(staged, dest)
            return
        raise
    staged.unlink()


def _across(staged: Path, dest: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):  # planned into incoming's own quarantine (pipeline): never copied
        raise OSError(errno.EXDEV, "a folder or special file is not copied across filesystems", str(dest))
    fd = os.open(staged, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        copy_from(fd, dest)
    finally:
        os.close(fd)
    staged.unlink()


def copy_from(fd: int, dest: Path) -> None:
    """Write the bytes of an open file to ``dest``: a temporary name, flushed, then linked into place
    (``link`` refuses a taken name atomically); the temporary name is always removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(fit(f".{dest.name}", ".inspectd-tmp"))
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        try:
            offset = 0
            while True:
                chunk = os.pread(fd, 1 << 20, offset)
                if not chunk:
                    break
                os.write(out, chunk)
                offset += len(chunk)
            st = os.fstat(fd)
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(out)
        finally:
            os.close(out)
        os.link(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    except (FileNotFoundError, NotADirectoryError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _rename_noreplace(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _occupied(dest):
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    src.replace(dest)


def write_reason(dest: Path, reason: str, detail: str) -> None:
    """A note beside a quarantined file, for whoever opens the folder."""
    note = dest.with_name(fit(dest.name, ".reason.json"))
    note.write_text(json.dumps({"file": dest.name, "reason": reason, "detail": detail}) + "\n")
