"""The decode workers (intake.py) and the batch stage (batcher.py) on real files, real threads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inspectd.core.records import Changed, Decoded, Loaded, Rejected
from inspectd.core.tiles import View
from inspectd.daemon.intake import batcher
from inspectd.daemon.intake import decode as decode_module
from inspectd.daemon.intake.budget import Reservation
from inspectd.daemon.intake.decode import DecodeLimits, decode_loaded
from inspectd.daemon.intake.readiness import Readiness
from inspectd.daemon.intake.workers import Intake, Prepared
from inspectd.daemon.metrics import Metrics
from tests.conftest import png_bytes, wait_until, write_burst

VIEW = View((128, 128))


def make(folder: Path, workers: int, capacity: int = 64) -> tuple[Readiness, Intake]:
    readiness = Readiness(folder, (".png",), (".*", "*.tmp"), settle_s=0.2, stale_s=10.0)
    intake = Intake(
        readiness, DecodeLimits(64_000_000, 1 << 28), lambda: VIEW, workers, Metrics("t"), capacity
    )
    return readiness, intake


def drop(folder: Path, readiness: Readiness, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        path = folder / f"{i:03d}.png"
        path.write_bytes(png_bytes(i))
        readiness.completed(path)


def drain(intake: Intake) -> list[Prepared]:
    out: list[Prepared] = []
    while (item := intake.get(0.5)) is not None:
        out.append(item)
    return out


def test_every_file_is_decoded_once_by_several_workers(tmp_path: Path) -> None:
    readiness, intake = make(tmp_path, workers=3)
    intake.start()
    writer = write_burst(tmp_path, 120, seed=5)  # a real process: temporary name, then rename
    assert writer.wait(60) == 0
    readiness.scan()  # the events are not wired here: the scan finds them, settle_s later they are ready
    got = wait_until(lambda: drain(intake) or None, 10, "decoded files")
    got += drain(intake)
    intake.stop()
    wait_until(intake.drained, 5, "workers stopped")
    names = sorted(p.item.source.path.name for p in got)
    assert names == sorted(p.name for p in tmp_path.glob("f5-*.png")) and len(names) == 120
    assert all(isinstance(p.item, Decoded) and p.view == VIEW for p in got)


def test_a_batch_fills_up_under_a_backlog_and_closes_at_once_without_one(tmp_path: Path) -> None:
    readiness, intake = make(tmp_path, workers=1)
    drop(tmp_path, readiness, 40)  # ready before the worker starts: a backlog of 40
    intake.start()
    # the oldest file waited long ago (max_wait 0): without a backlog the batch would close with what is
    # decoded so far; with one, it waits for the decoder to fill it
    batch = batcher.collect(intake, 16, 0.0, timeout=10)
    assert len(batch) == 16
    rest: list[Prepared] = []
    while len(rest) < 24:
        rest += batcher.collect(intake, 16, 0.0, timeout=10)
    assert len(rest) == 24 and not intake.behind()
    drop(tmp_path, readiness, 1, start=40)  # a lone file with nothing behind it: alone in its batch
    started = time.monotonic()
    lone = batcher.collect(intake, 16, 0.0, timeout=10)
    assert [p.item.source.path.name for p in lone] == ["040.png"]
    assert time.monotonic() - started < 5  # not held for company (a generous bound: no timing claim)
    intake.stop()


def test_stop_finishes_the_files_in_hand_and_leaves_the_rest_ready(tmp_path: Path) -> None:
    readiness, intake = make(tmp_path, workers=2, capacity=4)
    drop(tmp_path, readiness, 30)
    intake.start()
    # nobody consumes: the queue fills (4) and each worker blocks holding one more (2); 24 stay ready
    wait_until(lambda: readiness.queued() == 24, 10, "the workers blocked on a full queue")
    time.sleep(0.3)
    assert readiness.queued() == 24
    intake.stop()
    delivered: list[Prepared] = []
    while not intake.drained():
        delivered += drain(intake)
    assert len(delivered) == 6 and readiness.queued() == 24  # nothing lost, nothing taken after the stop
    assert all(isinstance(p.item, Decoded) for p in delivered)
    left = {r.path.name for r in readiness.take(100, 0)}
    assert len(left) == 24 and not left & {p.item.source.path.name for p in delivered}


def test_a_bug_in_one_file_is_recorded_against_that_file_and_the_rest_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode_loaded

    def flaky(
        loaded: Loaded, limits: DecodeLimits, view: View, held: Reservation
    ) -> Decoded | Rejected | Changed:
        if loaded.source.path.name == "001.png":
            raise KeyError("a bug in the decode stage")  # fault injection: what no input should cause
        return real(loaded, limits, view, held)

    monkeypatch.setattr(decode_module, "decode_loaded", flaky)
    readiness, intake = make(tmp_path, workers=2)
    drop(tmp_path, readiness, 3)
    intake.start()
    got = {p.item.source.path.name: p.item for p in wait_until(lambda: drain(intake) or None, 10, "files")}
    got |= {p.item.source.path.name: p.item for p in drain(intake)}
    intake.stop()
    assert sorted(got) == ["000.png", "001.png", "002.png"]
    bad = got["001.png"]
    assert isinstance(bad, Rejected) and bad.reason == "internal_error" and "KeyError" in bad.detail
    assert isinstance(got["000.png"], Decoded) and isinstance(got["002.png"], Decoded)


def test_a_worker_survives_an_error_outside_any_file_and_gives_its_files_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readiness, intake = make(tmp_path, workers=1)
    real = intake._handle
    calls = []

    def broken_once(files: list) -> bool:  # type: ignore[type-arg]
        calls.append(len(files))
        if len(calls) == 1:
            raise RuntimeError("fault injection: a bug between two files")
        return real(files)

    monkeypatch.setattr(intake, "_handle", broken_once)
    drop(tmp_path, readiness, 1)
    intake.start()
    (got,) = wait_until(lambda: drain(intake) or None, 10, "the file, after the worker's error")
    assert isinstance(got.item, Decoded) and len(calls) == 2
    assert intake.alive(30.0)
    intake.stop()


def test_the_memory_budget_lets_one_huge_decode_in_at_a_time() -> None:
    import threading

    from inspectd.daemon.intake.budget import MemoryBudget, OverBudget

    budget = MemoryBudget(100)
    order: list[str] = []
    with budget.reservation() as first:
        first.ensure(70)

        def second() -> None:
            with budget.reservation() as held:
                held.ensure(10)  # fits beside the first
                held.ensure(60)  # does not: waits, holding nothing, until the first is done
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"] and budget.used == 0
    with budget.reservation() as held, pytest.raises(OverBudget):
        held.ensure(101)
    with budget.reservation() as held:  # a temporary buffer (the frame shrunk once) is given back
        held.ensure(90)
        held.shrink_to(40)
        assert budget.used == 40 and held.bytes == 40
        held.shrink_to(60)  # never grows
        assert budget.used == 40
    assert budget.used == 0


def test_a_bug_after_the_open_does_not_leak_the_files_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = decode_module.cut  # type: ignore[attr-defined]

    def broken(*args: object, **kwargs: object) -> object:
        raise KeyError("fault injection: a bug while cutting tiles")

    monkeypatch.setattr(decode_module, "cut", broken)
    readiness, intake = make(tmp_path / "in", workers=1)
    (tmp_path / "in").mkdir()
    before = len(list(Path("/proc/self/fd").iterdir()))
    drop(tmp_path / "in", readiness, 5)
    intake.start()
    got: list[Prepared] = []  # gathered over several drains: each failure's logged traceback takes time

    def five() -> bool:
        got.extend(drain(intake))
        return len(got) >= 5

    wait_until(five, 30, "five files")
    intake.stop()
    assert len(got) == 5
    assert all(isinstance(p.item, Rejected) and p.item.reason == "internal_error" for p in got)
    for p in got:
        p.item.source.close()
    assert len(list(Path("/proc/self/fd").iterdir())) <= before
    monkeypatch.setattr(decode_module, "cut", real)
