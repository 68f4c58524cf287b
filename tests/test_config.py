from __future__ import annotations

from pathlib import Path

import pytest

from inspectd.core.config import EX_CONFIG, Config, ConfigError, load_config, resolve_relative
from tests.conftest import Workspace


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_shipped_config_is_valid_and_equals_defaults() -> None:
    root = Path(__file__).resolve().parent.parent
    shipped = load_config(root / "config.toml")
    assert shipped == resolve_relative(Config(), root)
    assert shipped.paths.incoming == root / "var" / "incoming"
    assert shipped.database.url == f"sqlite:///{root / 'var' / 'inspectd.db'}"
    assert shipped.http.port == 9108


def test_every_default_key_is_documented_in_config_toml() -> None:
    import tomllib

    root = Path(__file__).resolve().parent.parent
    text = (root / "config.toml").read_text()
    shipped = tomllib.loads(text)
    for section, model in Config.model_fields.items():
        assert f"[{section}]" in text, section
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert key in shipped.get(section, {}) or f"# {key} =" in text, f"{section}.{key} undocumented"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[paths]\nincomming = 'x'\n")
    with pytest.raises(ConfigError, match=r"paths\.incomming: unknown key"):
        load_config(path)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pathz: unknown key"):
        load_config(write(tmp_path, "[pathz]\nincoming = 'x'\n"))


def test_bad_value_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"batch\.max_size"):
        load_config(write(tmp_path, "[batch]\nmax_size = 0\n"))
    with pytest.raises(ConfigError, match=r"http\.listen: .*HOST:PORT"):
        load_config(write(tmp_path, "[http]\nlisten = 'localhost'\n"))
    with pytest.raises(ConfigError, match=r"watch\.observer"):
        load_config(write(tmp_path, "[watch]\nobserver = 'fanotify'\n"))


def test_toml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[paths\n"))


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[batch]\nmax_size = 8\n[station]\nname = 'a'\n")
    monkeypatch.setenv("INSPECTD_BATCH__MAX_SIZE", "4")
    monkeypatch.setenv("INSPECTD_STATION__NAME", "line-7")
    config = load_config(path)
    assert config.batch.max_size == 4
    assert config.station.name == "line-7"


def test_environment_unknown_key_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECTD_BATCH__MAX_SIZ", "4")
    with pytest.raises(ConfigError, match=r"batch\.max_siz: unknown key"):
        load_config(write(tmp_path, ""))


def test_inspectd_config_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[station]\nname = 'from-env'\n")
    monkeypatch.setenv("INSPECTD_CONFIG", str(path))
    assert load_config().station.name == "from-env"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    config = load_config(write(sub, "[paths]\nincoming = 'in'\nprocessed = '/abs/done'\n"))
    assert config.paths.incoming == sub / "in"
    assert config.paths.processed == Path("/abs/done")
    assert config.database.url == f"sqlite:///{sub / 'var' / 'inspectd.db'}"


def test_cli_exits_78_naming_the_key(ws: Workspace) -> None:
    ws.config.write_text("[decode]\nmax_pixel = 5\n")
    for args in (("run",), ("check-config",), ("db", "upgrade")):
        result = ws.cli(*args, check=False)
        assert result.returncode == EX_CONFIG, args
        assert "decode.max_pixel: unknown key" in result.stderr
