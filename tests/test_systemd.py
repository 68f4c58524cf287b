"""The units, checked offline by systemd's own tools (systemd is never booted here).

The layout (systemd/inspectd.sysusers, systemd/inspectd.tmpfiles) is applied by the real
``systemd-sysusers --root`` and ``systemd-tmpfiles --root`` to a temporary folder, never to this machine,
and writers and the daemon are then played by processes with those users' IDs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from sqlalchemy.engine import make_url

from inspectd.core.config import DecodeConfig, load_config

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.timer"))
SERVICES = sorted(SYSTEMD.glob("*.service"))
DAEMON = SYSTEMD / "inspectd.service"
RETRAIN = SYSTEMD / "inspectd-retrain.service"
SYSUSERS = SYSTEMD / "inspectd.sysusers"
TMPFILES = SYSTEMD / "inspectd.tmpfiles"
CONFIG = SYSTEMD / "config.toml"  # installed as /etc/inspectd/config.toml
INSTALLED_CONFIG = PurePosixPath("/etc/inspectd/config.toml")

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating folders owned by other users needs root")
needs_layout_tools = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers / systemd-tmpfiles missing",
)


def localised(unit: Path, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists on this machine."""
    text = unit.read_text().replace(
        "/opt/inspectd/venv/bin/inspectd", str(Path(sys.executable).parent / "inspectd")
    )
    out = tmp_path / unit.name
    out.write_text(text)
    return out


def directives(unit: Path, section: str = "Service") -> dict[str, list[str]]:
    """``KEY=VALUE`` lines of one section, every value of a repeated key in order (comments dropped)."""
    out: dict[str, list[str]] = {}
    current = None
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            continue
        if current == section and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def words(unit: Path, key: str) -> list[str]:
    """Every space-separated value of a list setting such as ReadWritePaths=."""
    return [w for value in directives(unit).get(key, []) for w in value.split()]


def size_bytes(value: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    match = re.fullmatch(r"(\d+)([KMGT]?)", value)
    assert match, f"not a size systemd reads as bytes here: {value}"
    return int(match.group(1)) * units[match.group(2)]


def tmpfiles_lines() -> list[list[str]]:
    return [line.split() for line in TMPFILES.read_text().splitlines() if line.strip() and line[0] != "#"]


def covered(path: PurePosixPath, allowed: list[str]) -> bool:
    return any(path == PurePosixPath(a) or PurePosixPath(a) in path.parents for a in allowed)


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
@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_service_is_hardened(unit: Path, tmp_path: Path) -> None:
    local = localised(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(local)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout
    score = float(match.group(1))
    # 1.3 with DynamicUser=; 1.1 with the static user (PrivateMounts= added, SupplementaryGroups= costs 0.1)
    assert score <= 1.3, result.stdout


def test_service_contract() -> None:
    text = DAEMON.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text
    for code in ("0 ", "78 ", "1 "):  # the exit status table in the header
        assert re.search(rf"^#\s+{code}", text, re.MULTILINE), f"exit status {code.strip()} undocumented"


def test_memory_is_bounded() -> None:
    service = directives(DAEMON)
    high, top = size_bytes(service["MemoryHigh"][-1]), size_bytes(service["MemoryMax"][-1])
    # steady RSS ~160 MiB, decode of large frames a few hundred MiB more: room for both, then a bound
    assert 768 * 1024**2 <= high < top <= 2 * 1024**3
    budget = getattr(DecodeConfig(), "max_memory_mib", None)  # what the decode stage may hold at once
    if budget is not None:
        assert (160 + budget) * 1024**2 < high, "MemoryHigh= would throttle a daemon within its budget"
    assert service["OOMPolicy"] == ["stop"]  # an OOM kill stops the unit, and Restart= restarts it
    assert service.get("MemorySwapMax") == ["0"]


def test_units_share_a_static_user_the_sysusers_file_creates() -> None:
    entries = [line.split() for line in SYSUSERS.read_text().splitlines() if line.strip() and line[0] != "#"]
    users = {e[1] for e in entries if e[0] == "u"}
    groups = users | {e[1] for e in entries if e[0] == "g"}
    for unit in SERVICES:
        service = directives(unit)
        # DynamicUser= would put the state under /var/lib/private (0700): no writer could reach incoming
        assert service.get("DynamicUser", ["no"])[-1] == "no", unit.name
        # StateDirectory= would chown the whole tree to User:Group whenever its top is owned otherwise,
        # taking incoming/ away from its writers' group: the folders are tmpfiles.d's
        assert "StateDirectory" not in service, unit.name
        assert service["User"] == ["inspectd"] and service["User"][0] in users, unit.name
        assert service["Group"] == ["inspectd"], unit.name
        assert set(words(unit, "SupplementaryGroups")) == {"inspectd-writers"} <= groups, unit.name
        assert service["UMask"] == ["0027"], unit.name
    for line in tmpfiles_lines():
        assert line[3] in users | {"root"} and line[4] in groups | {"root"}, line


def test_every_configured_path_is_created_and_writable_by_its_units() -> None:
    for unit in SERVICES:
        assert directives(unit)["Environment"].count(f"INSPECTD_CONFIG={INSTALLED_CONFIG}") == 1, unit.name
    cfg = load_config(CONFIG)
    url = make_url(cfg.database.url)
    assert url.get_backend_name() == "sqlite"
    database_folder = PurePosixPath(url.database or "").parent
    paths = {name: PurePosixPath(value) for name, value in cfg.paths}
    created = {PurePosixPath(line[1]) for line in tmpfiles_lines() if line[0] == "d"}
    for path in [*paths.values(), database_folder, INSTALLED_CONFIG.parent]:
        assert path.is_absolute() and path in created, f"{path}: no tmpfiles.d line creates it"
    daemon_writes = [paths[n] for n in ("incoming", "processed", "quarantine", "models")] + [database_folder]
    retrain_writes = [paths["models"], paths["runs"], database_folder]
    for unit, needed in ((DAEMON, daemon_writes), (RETRAIN, retrain_writes)):
        allowed = words(unit, "ReadWritePaths")
        assert directives(unit)["ProtectSystem"] == ["strict"]
        for path in needed:
            assert covered(path, allowed), f"{unit.name}: {path} is not in ReadWritePaths={allowed}"
        for extra in allowed:  # no more than the configuration needs
            assert any(PurePosixPath(extra) in (p, *p.parents) for p in needed), (
                f"{unit.name}: {extra} unused"
            )
    # each ReadWritePaths= entry is a bind mount of its own: link()/rename() between two of them fail
    # with EXDEV, so incoming and the archive's folders must lie under one entry
    archive = [paths[n] for n in ("incoming", "processed", "quarantine")]
    entries = words(DAEMON, "ReadWritePaths")
    assert any(all(covered(p, [entry]) for p in archive) for entry in entries), entries


@needs_layout_tools
def test_sysusers_and_tmpfiles_parse(tmp_path: Path) -> None:
    """Both files are read without a complaint (``FILE:LINE: ...``) by the tools, against a temporary
    root; creating the folders (needs root) is the next test's."""
    (tmp_path / "etc").mkdir()
    for args in (
        ["systemd-sysusers", "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],  # passwd, group under tmp_path/etc
        ["systemd-tmpfiles", f"--root={tmp_path}", "--clean", str(TMPFILES)],  # no age: parses, cleans none
    ):
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        complaints = [line for line in result.stderr.splitlines() if line.startswith(str(SYSTEMD))]
        assert complaints == [], result.stderr
    assert "inspectd-writers:" in (tmp_path / "etc/group").read_text()
    assert not (tmp_path / "var").exists()


@pytest.fixture
def layout() -> Iterator[Path]:
    """sysusers.d and tmpfiles.d applied to a temporary root (traversable by the IDs created in it)."""
    root = Path(tempfile.mkdtemp(prefix="inspectd-layout-"))
    try:
        root.chmod(0o755)
        (root / "etc").mkdir()
        for tool, conf in (("systemd-sysusers", SYSUSERS), ("systemd-tmpfiles", TMPFILES)):
            args = [tool, f"--root={root}", *(["--create"] if tool == "systemd-tmpfiles" else []), str(conf)]
            result = subprocess.run(args, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
        yield root
    finally:
        shutil.rmtree(root)


def ids(root: Path) -> dict[str, int]:
    """Names to IDs in the temporary root's passwd and group files (``user:NAME``, ``group:NAME``)."""
    out = {}
    for kind, file in (("user", "passwd"), ("group", "group")):
        for line in (root / "etc" / file).read_text().splitlines():
            name, _, number, *_ = line.split(":")
            out[f"{kind}:{name}"] = int(number)
    return out


@needs_root
@needs_layout_tools
def test_layout_incoming_is_group_writable_the_rest_private(layout: Path) -> None:
    known = ids(layout)
    uid, gid, writers = known["user:inspectd"], known["group:inspectd"], known["group:inspectd-writers"]
    assert gid != writers
    base = layout / "var/lib/inspectd"
    incoming = (base / "incoming").stat()
    assert stat.S_ISDIR(incoming.st_mode)
    assert (incoming.st_uid, incoming.st_gid) == (uid, writers)
    assert stat.S_IMODE(incoming.st_mode) == 0o2770  # setgid, group-writable, nothing for others
    top = base.stat()
    assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (uid, 0o751)  # writers pass through, cannot list
    for name in ("processed", "quarantine", "models", "runs", "db"):
        st = (base / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), name
    for name in ("labels", "labels/present", "labels/absent"):
        st = (base / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o2770), name
    etc = (layout / "etc/inspectd").stat()
    assert (etc.st_uid, etc.st_gid, stat.S_IMODE(etc.st_mode)) == (0, gid, 0o750)


def as_account(uid: int, gid: int, groups: list[int], umask: int, work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child with these IDs only (no capabilities left), as a login of that
    account would; raise with the child's traceback if it failed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.umask(umask)
            work()
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        message = fh.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, message


@needs_root
@needs_layout_tools
def test_layout_writers_drop_files_the_daemon_reads_and_moves(layout: Path) -> None:
    """Unix permissions only (no namespaces), with the system calls the daemon's archive makes: a camera
    account in inspectd-writers writes into incoming (cp; rsync's temporary name then rename; replacing a
    name by rename); the daemon's user, with its supplementary group, reads each file, renames it to a
    private name in incoming, links it into processed (renames it there when it may only read it:
    fs.protected_hardlinks), unlinks it, and writes a note into quarantine. An account outside the group
    cannot write into incoming; the writer cannot look into the rest."""
    known = ids(layout)
    uid, gid, writers = known["user:inspectd"], known["group:inspectd"], known["group:inspectd-writers"]
    base = layout / "var/lib/inspectd"
    incoming, processed, quarantine = base / "incoming", base / "processed", base / "quarantine"
    camera = 61000 + os.getpid() % 1000  # IDs of no account: only their numbers matter to the kernel

    def stranger() -> None:
        with pytest.raises(PermissionError):
            (incoming / "c.png").write_bytes(b"c")

    def writer() -> None:
        (incoming / "a.png").write_bytes(b"a")  # cp, umask 007: readable by the group only
        os.umask(0o022)  # the common umask: this file is only group-readable
        (incoming / ".b.png.Xy12Ab").write_bytes(b"old")  # rsync: a temporary name, then rename
        (incoming / ".b.png.Xy12Ab").rename(incoming / "b.png")
        (incoming / "b.png.tmp").write_bytes(b"b")  # a new version replaces the name by rename
        (incoming / "b.png.tmp").rename(incoming / "b.png")
        for private in (processed, quarantine, base / "db", base):
            with pytest.raises(PermissionError):
                list(private.iterdir())
        with pytest.raises(PermissionError):
            (processed / "x.png").write_bytes(b"x")

    def daemon() -> None:
        day = processed / "2026-01-01"
        day.mkdir()
        for name in ("a.png", "b.png"):
            src = incoming / name
            assert src.read_bytes() == name[:1].encode()
            staged = incoming / f".{name}.inspectd-taking"
            src.rename(staged)
            try:
                os.link(staged, day / name)
                staged.unlink()
            except PermissionError:  # EPERM: not writable by us, fs.protected_hardlinks refuses the link
                staged.rename(day / name)
        (quarantine / "note.reason.json").write_text("{}")

    as_account(camera + 1, camera + 1, [], 0o002, stranger)
    as_account(camera, camera, [writers], 0o007, writer)
    for name, mode in (("a.png", 0o660), ("b.png", 0o644)):
        st = (incoming / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (camera, writers, mode), name
    service = directives(DAEMON)  # the daemon as its unit runs it
    groups = [known[f"group:{name}"] for name in words(DAEMON, "SupplementaryGroups")]
    umask = int(service["UMask"][-1], 8)
    as_account(
        known[f"user:{service['User'][-1]}"], known[f"group:{service['Group'][-1]}"], groups, umask, daemon
    )
    assert list(incoming.iterdir()) == []
    assert sorted(p.name for p in processed.glob("*/*")) == ["a.png", "b.png"]
    note = (quarantine / "note.reason.json").stat()
    assert (note.st_uid, note.st_gid, stat.S_IMODE(note.st_mode)) == (uid, gid, 0o640)  # UMask=0027
