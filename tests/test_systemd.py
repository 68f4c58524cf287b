"""The units, checked offline by systemd's own tools (systemd is never booted here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service")) + sorted((ROOT / "systemd").glob("*.timer"))

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")


def localised(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists on this machine."""
    text = unit.read_text().replace(
        "/opt/inspectd/venv/bin/inspectd", str(Path(sys.executable).parent / "inspectd")
    )
    out = tmp_path / unit.name
    out.write_text(text)
    return out


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_verify(unit: Path, tmp_path: Path) -> None:
    for other in UNITS:  # a timer needs its service beside it
        localised(other, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--recursive-errors=yes", "--man=no", str(tmp_path / unit.name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@needs_systemd
def test_service_is_hardened(tmp_path: Path) -> None:
    unit = localised(ROOT / "systemd" / "inspectd.service", tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout
    score = float(match.group(1))
    assert score <= 2.0, result.stdout


def test_service_contract() -> None:
    text = (ROOT / "systemd" / "inspectd.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text
