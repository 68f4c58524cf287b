from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from inspectd import archive

WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def test_move_creates_the_days_folder_and_never_overwrites(tmp_path: Path) -> None:
    incoming, root = tmp_path / "incoming", tmp_path / "processed"
    incoming.mkdir()
    (incoming / "a.png").write_bytes(b"first")
    dest = archive.plan(root, WHEN, "a.png", "ab" * 32, set())
    assert dest == root / "2026-11-24" / "a.png"
    archive.move(incoming / "a.png", dest)  # the folder does not exist yet
    assert dest.read_bytes() == b"first" and not (incoming / "a.png").exists()

    (incoming / "a.png").write_bytes(b"second")
    with pytest.raises(FileExistsError):
        archive.move(incoming / "a.png", dest)
    assert dest.read_bytes() == b"first" and (incoming / "a.png").read_bytes() == b"second"
    again = archive.plan(root, WHEN, "a.png", "cd" * 32, set())
    assert again.name == f"a.{'cd' * 6}.png"


def test_a_source_that_is_gone_raises_and_creates_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "processed" / "2026-11-24" / "gone.png"
    with pytest.raises(FileNotFoundError):
        archive.move(tmp_path / "gone.png", dest)
    assert not (tmp_path / "processed").exists()


def test_a_dangling_link_is_a_taken_name(tmp_path: Path) -> None:
    folder = tmp_path / "processed" / "2026-11-24"
    folder.mkdir(parents=True)
    (folder / "b.png").symlink_to(tmp_path / "nowhere")
    assert archive.plan(tmp_path / "processed", WHEN, "b.png", "ef" * 32, set()).name == f"b.{'ef' * 6}.png"
