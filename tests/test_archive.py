from __future__ import annotations

import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inspectd.core.records import FileId
from inspectd.daemon.commit import archive

WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def opened(path: Path) -> tuple[FileId, int]:
    fd = os.open(path, os.O_RDONLY)
    return FileId.of(os.fstat(fd)), fd


def test_take_creates_the_days_folder_and_never_overwrites(tmp_path: Path) -> None:
    incoming, root = tmp_path / "incoming", tmp_path / "processed"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(b"first")
    dest = archive.plan(root, WHEN, "a.png", "ab" * 32, set())
    assert dest == root / "2026-11-24" / "a.png"
    archive.take(incoming / "a.png", dest, None, None)  # the folder does not exist yet
    assert dest.read_bytes() == b"first" and not (incoming / "a.png").exists()

    (incoming / "a.png").write_bytes(b"second")
    with pytest.raises(FileExistsError):
        archive.take(incoming / "a.png", dest, None, None)
    assert dest.read_bytes() == b"first" and (incoming / "a.png").read_bytes() == b"second"
    assert sorted(p.name for p in incoming.iterdir()) == ["a.png"]  # no private name left behind
    again = archive.plan(root, WHEN, "a.png", "cd" * 32, set())
    assert again.name == f"a.{'cd' * 6}.png"


def test_taken_names_keep_their_extension_and_do_not_grow(tmp_path: Path) -> None:
    root = tmp_path / "processed"
    folder = root / "2026-11-24"
    folder.mkdir(parents=True)
    names = []
    for _ in range(4):
        dest = archive.plan(root, WHEN, "ro.png", "ab" * 32, set())
        dest.write_bytes(b"x")
        names.append(dest.name)
    assert names[:2] == ["ro.png", f"ro.{'ab' * 6}.png"]
    assert all(re.fullmatch(f"ro[.]{'ab' * 6}[.][0-9a-f]{{6}}[.]png", n) for n in names[2:])
    assert len(set(names)) == 4


def test_long_and_non_utf8_names_fit_and_are_text(tmp_path: Path) -> None:
    root = tmp_path / "processed"
    long = "l" * 250 + ".png"  # 254 bytes: a suffix would make it too long
    first = archive.plan(root, WHEN, long, "ab" * 32, set())
    first.parent.mkdir(parents=True)
    first.write_bytes(b"x")
    second = archive.plan(root, WHEN, long, "cd" * 32, set())
    assert len(os.fsencode(second.name)) <= 255 and second.name.endswith(f".{'cd' * 6}.png")
    second.write_bytes(b"y")
    archive.write_reason(second, "decode_failed", "detail")  # the note's name fits too
    odd = os.fsdecode(b"bad\xff\xfe.png")
    dest = archive.plan(root, WHEN, odd, "ef" * 32, set())
    assert dest.name == "bad\\xff\\xfe.png"
    dest.name.encode("utf-8")  # a database can store it


def test_a_file_replaced_under_its_name_is_archived_from_what_was_read(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "cam.png").write_bytes(b"H1")
    file_id, fd = opened(incoming / "cam.png")
    (incoming / ".next").write_bytes(b"H2")
    (incoming / ".next").rename(incoming / "cam.png")  # the camera's next frame, renamed over it
    dest = tmp_path / "processed" / "2026-11-24" / "cam.png"
    try:
        taken = archive.take(incoming / "cam.png", dest, file_id, fd)
    finally:
        os.close(fd)
    assert taken.replaced
    assert dest.read_bytes() == b"H1"  # the bytes that were read, from the open descriptor
    assert (incoming / "cam.png").read_bytes() == b"H2"  # the new frame is still there, untouched
    assert sorted(p.name for p in incoming.iterdir()) == ["cam.png"]


def test_a_source_that_cannot_be_removed_is_never_copied(tmp_path: Path) -> None:
    """An append-only incoming (``chattr +a``: files can be added, not removed or renamed; root too)."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "ro.png").write_bytes(b"x")
    if subprocess.run(["chattr", "+a", str(incoming)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +a is not available here")
    dest = tmp_path / "processed" / "2026-11-24" / "ro.png"
    try:
        with pytest.raises(PermissionError):
            archive.take(incoming / "ro.png", dest, None, None)
    finally:
        subprocess.run(["chattr", "-a", str(incoming)], check=True)
    assert not (tmp_path / "processed").exists() and (incoming / "ro.png").read_bytes() == b"x"


def test_across_filesystems_a_file_is_copied_once_and_a_folder_never(tmp_path: Path) -> None:
    other = Path("/dev/shm") / f"inspectd-test-{os.getpid()}"
    if not Path("/dev/shm").is_dir() or Path("/dev/shm").stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(b"bytes")
    file_id, fd = opened(incoming / "a.png")
    try:
        archive.take(incoming / "a.png", other / "a.png", file_id, fd)
        assert (other / "a.png").read_bytes() == b"bytes" and not (incoming / "a.png").exists()
        assert sorted(p.name for p in other.iterdir()) == ["a.png"]  # no temporary name left
        deep = incoming / "deep.png"
        (deep / ("d/" * 50)).mkdir(parents=True)
        with pytest.raises(OSError, match="not copied"):
            archive.take(deep, other / "deep.png", None, None)
        assert deep.is_dir() and not (other / "deep.png").exists()
    finally:
        os.close(fd)
        for p in sorted(other.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        other.rmdir()


def test_a_crash_while_staged_is_recovered_under_the_original_name(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    mine, other = archive.token_for("station-1"), archive.token_for("station-2")
    (incoming / archive.staging_name("a.png", mine)).write_bytes(b"a")
    (incoming / archive.staging_name("b.png", mine)).write_bytes(b"b-old")
    (incoming / "b.png").write_bytes(b"b-new")  # the name was taken again meanwhile
    (incoming / archive.staging_name("c.png", other)).write_bytes(b"c")  # another daemon's, in flight
    for stray in (".inspectd-taking", ".x.inspectd-taking", f"..{mine}.inspectd-taking"):
        (incoming / stray).write_bytes(b"not ours")  # names that do not parse: left alone
    restored = archive.recover_staged(incoming, mine, 60.0)
    assert sorted(p.name for p in restored) == ["a.png", "b.png"]
    assert (incoming / "a.png").read_bytes() == b"a" and (incoming / "b.png").read_bytes() == b"b-new"
    assert (incoming / "b.restored-1.png").read_bytes() == b"b-old"
    assert not (incoming / "c.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["incoming"]  # nothing restored outside it
    later = archive.recover_staged(incoming, mine, 60.0, own=False, now=time.time() + 61)
    assert [p.name for p in later] == ["c.png"]  # another daemon's, old: a leftover of its crash


def test_a_staged_file_of_a_daemon_that_is_alive_is_left_alone_however_old(tmp_path: Path) -> None:
    """Another daemon's file staged long ago is in flight while that daemon marks itself alive (it waits
    out a database outage, say); once the mark is as old as the lease, it is a crash's leftover."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    mine, other = archive.token_for("station-1"), archive.token_for("station-2")
    (incoming / archive.staging_name("c.png", other)).write_bytes(b"c")
    staged_at = time.time()
    archive.mark_alive(incoming, other)
    mark = incoming / archive.alive_name(other)
    os.utime(mark, (staged_at + 300, staged_at + 300))  # marked alive 5 minutes after it staged c.png
    assert archive.recover_staged(incoming, mine, 60.0, own=False, now=staged_at + 330) == []
    assert archive.recover_staged(incoming, mine, 60.0, own=False, now=staged_at + 361) == [
        incoming / "c.png"
    ]
    assert mark.exists()  # an alive mark is not a staged file: never restored, never a candidate
    # ages on a shared folder are measured by its file server's clock: this daemon's own mark, touched
    before = time.time()
    assert before - 1 <= archive.folder_time(incoming, mine) <= time.time() + 1
    assert (incoming / archive.alive_name(mine)).exists()
    assert before <= archive.folder_time(tmp_path / "gone", mine) <= time.time()  # none: this clock


def test_a_source_that_is_gone_raises_and_creates_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "processed" / "2026-11-24" / "gone.png"
    with pytest.raises(FileNotFoundError):
        archive.take(tmp_path / "gone.png", dest, None, None)
    assert not (tmp_path / "processed").exists()


def test_a_dangling_link_is_a_taken_name(tmp_path: Path) -> None:
    folder = tmp_path / "processed" / "2026-11-24"
    folder.mkdir(parents=True)
    (folder / "b.png").symlink_to(tmp_path / "nowhere")
    assert archive.plan(tmp_path / "processed", WHEN, "b.png", "ef" * 32, set()).name == f"b.{'ef' * 6}.png"
