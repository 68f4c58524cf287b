"""The ``[mqtt]`` section: where each committed result is published (daemon/publish/), and how."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from inspectd.core.retrain_config import Section

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class MqttConfig(Section):
    """Unset ``url``: nothing is published (and no outbox row is written)."""

    url: str | None = None  # mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)
    topic_prefix: str = "inspectd"  # <prefix>/<station>/result, /status, /model
    qos: Literal[1, 2] = 1  # at least once: a result is re-sent until the broker acknowledges it
    client_id: str | None = None  # default: inspectd-<station>
    username: str | None = None
    password_file: Path | None = None  # its first line is the password (kept out of the config file)
    tls_ca_file: Path | None = None  # mqtts: the CA that signed the broker's certificate (default: system)
    tls_cert_file: Path | None = None  # mqtts: a client certificate, with tls_key_file
    tls_key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    in_flight: int = Field(default=200, ge=1, le=10_000)  # messages awaiting the broker's PUBACK at once

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError("must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ValueError("no path, query or credentials in the URL (username, password_file)")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or any(c in value for c in "+#\0"):
            raise ValueError("a topic without wildcards (+ #) and without a leading or trailing /")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url or "").hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "")
        return parts.port or DEFAULT_PORTS.get(parts.scheme, 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url or "").scheme == "mqtts"

    def paths(self) -> dict[str, Path]:
        return {
            name: getattr(self, name)
            for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
            if getattr(self, name) is not None
        }
