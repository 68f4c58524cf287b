from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.intake.watcher import start_observer
from tests.conftest import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(folder: Path, clock: FakeClock) -> Readiness:
    return Readiness(
        folder, (".png", ".jpg"), (".*", "*.part", "*.tmp"), settle_s=0.5, stale_s=10.0, clock=clock
    )


def names(items: list) -> list[str]:  # type: ignore[type-arg]
    return [i.path.name for i in items]


def test_close_after_write_is_ready_at_once(tmp_path: Path) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    (tmp_path / "a.png").write_bytes(b"x")
    r.touched(tmp_path / "a.png", writing=True)
    assert r.take(10, 0) == []
    r.completed(tmp_path / "a.png")
    assert names(r.take(10, 0)) == ["a.png"]


def test_bare_create_waits_until_size_is_stable(tmp_path: Path) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "b.png"
    path.write_bytes(b"x")
    r.touched(path, writing=False)  # the first look records the size
    assert r.take(10, 0) == []
    clock.now += 0.3
    path.write_bytes(b"xy")  # still growing
    assert r.take(10, 0) == []
    clock.now += 0.3  # the next look, at the end of the settle time, sees it changed: settle again
    assert r.take(10, 0) == []
    clock.now += 0.3
    assert r.take(10, 0) == []  # only 0.3 s since that look
    clock.now += 0.3
    assert names(r.take(10, 0)) == ["b.png"]


def test_a_burst_of_creates_is_looked_at_once_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    for i in range(200):
        (tmp_path / f"{i}.png").write_bytes(b"x")
    looks: list[Path] = []
    real = Path.lstat

    def counting(self: Path) -> os.stat_result:
        looks.append(self)
        return real(self)

    monkeypatch.setattr(Path, "lstat", counting)
    for i in range(200):
        r.touched(tmp_path / f"{i}.png", writing=False)
        clock.now += 0.001
        assert r.take(10, 0) == []
    clock.now += 0.5
    assert len(r.take(500, 0)) == 200
    assert len(looks) == 400  # one when created, one when its settle time ended


def test_open_for_write_without_close_waits_for_stale(tmp_path: Path) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "c.png"
    path.write_bytes(b"x")
    r.touched(path, writing=True)
    r.take(10, 0)
    clock.now += 5
    assert r.take(10, 0) == []
    clock.now += 6
    assert names(r.take(10, 0)) == ["c.png"]


def test_temporary_and_foreign_names_are_ignored(tmp_path: Path) -> None:
    r = make(tmp_path, FakeClock())
    for name in (".a.png.Xy12Ab", "b.png.part", "c.tmp", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
        r.completed(tmp_path / name)
    (tmp_path / "sub").mkdir()
    r.completed(tmp_path / "sub" / "d.png")
    assert r.take(10, 0) == []
    assert r.accepts(tmp_path / "UPPER.PNG")


def test_a_file_is_handed_out_once_until_released(tmp_path: Path) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "d.png"
    path.write_bytes(b"x")
    r.completed(path)
    r.completed(path)
    r.touched(path, writing=False)
    assert names(r.take(10, 0)) == ["d.png"]
    r.completed(path)
    assert r.scan() == 0
    assert r.take(10, 0) == []
    r.release([path])
    r.completed(path)
    assert names(r.take(10, 0)) == ["d.png"]


def test_scan_finds_files_present_at_start(tmp_path: Path) -> None:
    clock = FakeClock()
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"x")
    (tmp_path / ".tmpfile.png").write_bytes(b"x")
    r = make(tmp_path, clock)
    assert r.scan() == 5
    assert r.take(10, 0) == []
    clock.now += 1
    assert sorted(names(r.take(10, 0))) == [f"{i}.png" for i in range(5)]
    assert r.backlog() == (0, 5)


def test_candidate_that_disappears_is_dropped(tmp_path: Path) -> None:
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "e.png"
    path.write_bytes(b"x")
    r.touched(path, writing=False)
    path.unlink()
    clock.now += 1
    assert r.take(10, 0) == []
    assert r.backlog() == (0, 0)


def test_take_respects_max(tmp_path: Path) -> None:
    r = make(tmp_path, FakeClock())
    for i in range(7):
        (tmp_path / f"{i}.png").write_bytes(b"x")
        r.completed(tmp_path / f"{i}.png")
    assert len(r.take(3, 0)) == 3
    assert len(r.take(10, 0)) == 4


HOLD_OPEN = "import sys\nf = open(sys.argv[1], 'wb')\nf.write(b'x')\nf.flush()\nsys.stdin.read()\nf.close()\n"


def test_inotify_rename_in_is_ready_at_once_an_open_file_waits_for_its_close(tmp_path: Path) -> None:
    """Real events from real processes; settle and stale are a minute, so only an event can make a file
    ready within the few seconds allowed here."""
    incoming, staging = tmp_path / "incoming", tmp_path / "staging"
    incoming.mkdir()
    staging.mkdir()
    r = Readiness(incoming, (".png",), (".*",), settle_s=60.0, stale_s=60.0)
    observer = start_observer(r, "inotify", 1.0)
    try:
        # renamed in from another folder: complete at once
        (staging / "moved.png").write_bytes(b"x")
        subprocess.run(["mv", str(staging / "moved.png"), str(incoming / "moved.png")], check=True)
        assert names(r.take(10, 5.0)) == ["moved.png"]

        # created by a writer that still holds it open: not ready until the writer closes it
        writer = subprocess.Popen(
            [sys.executable, "-c", HOLD_OPEN, str(incoming / "open.png")], stdin=subprocess.PIPE
        )
        wait_until(lambda: r.backlog()[0] == 1, 5, "the create event")
        assert r.take(10, 0.5) == []
        writer.communicate(b"")
        assert names(r.take(10, 5.0)) == ["open.png"]

        # a candidate renamed out of the folder before it was complete is never taken: no event of it
        # reaches readiness (IN_MOVED_FROM is not subscribed), and its next look finds it gone
        writer = subprocess.Popen(
            [sys.executable, "-c", HOLD_OPEN, str(incoming / "left.png")], stdin=subprocess.PIPE
        )
        wait_until(lambda: r.backlog()[0] == 1, 5, "the create event")
        subprocess.run(["mv", str(incoming / "left.png"), str(staging / "left.png")], check=True)
        writer.communicate(b"")
        assert r.take(10, 0.5) == []

        # a rename within the folder (rsync's temporary name, then the final one): complete at once
        (incoming / ".part.tmp").write_bytes(b"y")
        (incoming / ".part.tmp").rename(incoming / "renamed.png")
        assert names(r.take(10, 5.0)) == ["renamed.png"]
    finally:
        observer.stop()
        observer.join(5)


def test_an_empty_created_file_waits_for_its_writer(tmp_path: Path) -> None:
    """FTP/SMB servers create first and write later: an empty file is not complete by settling."""
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "ftp.png"
    path.touch()
    r.touched(path, writing=False)
    clock.now += 5.0  # far past settle_s
    assert r.take(10, 0) == []
    path.write_bytes(b"data")  # the bytes arrive, the close completes it
    r.completed(path)
    assert names(r.take(10, 0)) == ["ftp.png"]
    other = tmp_path / "left-empty.png"
    other.touch()
    r.touched(other, writing=False)
    clock.now += 10.1  # stale_s: a writer that never came back; taken (and recorded) as empty
    assert names(r.take(10, 0)) == ["left-empty.png"]


def test_an_event_for_a_path_in_flight_is_looked_at_after_its_release(tmp_path: Path) -> None:
    """A camera renames its next frame over the name while the first is being processed."""
    clock = FakeClock()
    r = make(tmp_path, clock)
    path = tmp_path / "cam.png"
    path.write_bytes(b"frame-1")
    r.completed(path)
    (taken,) = r.take(10, 0)
    path.write_bytes(b"frame-2")
    r.completed(path)  # in flight: not handed out twice at once...
    assert r.take(10, 0) == []
    r.release([taken.path])  # ...but not forgotten either
    clock.now += 0.5
    assert names(r.take(10, 0)) == ["cam.png"]
    r.release([path], again=[path])  # not final (changed while read): a candidate again
    clock.now += 0.5
    assert names(r.take(10, 0)) == ["cam.png"]


def test_the_archives_private_names_are_never_taken(tmp_path: Path) -> None:
    r = Readiness(tmp_path, (".png",), (), settle_s=0.5, stale_s=10.0, clock=FakeClock())
    assert not r.accepts(tmp_path / ".a.png.0123abcd.inspectd-taking")
    assert r.accepts(tmp_path / "a.png")
