"""Typed server configuration: defaults < TOML file < NARSET_* environment < command-line flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from narset.contract.limits import MAX_MESSAGE_BYTES
from narset.store import LOCK_TIMEOUT_S, is_postgres_url

__all__ = [
    "RESERVED_PRINCIPALS",
    "CertificateSetting",
    "Role",
    "ServerSettings",
    "TokenSetting",
    "exposure_error",
    "load_settings",
]

Role = Literal["admin", "operator", "viewer", "worker"]
# Principals of Narset itself (the decision engine, the tactical policy, the job's breakers): no
# token may take their names, and no client may claim them as a command's issuer.
RESERVED_PRINCIPALS = ("narset:", "policy:", "kasmina:")


class _Identity(BaseModel):
    """Who a caller is once authenticated: a name, a role and the jobs it may act on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=96, description="the identity: its commands' issued_by, the audit's who")
    role: Role = Field(description="admin: everything; operator: read and act; viewer: read; worker: attach jobs")
    jobs: tuple[str, ...] = Field(("*",), min_length=1, description="globs of the job ids it may act on")

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value.startswith(RESERVED_PRINCIPALS) or value == "anonymous":
            raise ValueError(f"{value!r} is a name Narset keeps for itself")
        return value


class TokenSetting(_Identity):
    """A bearer token Narset accepts. Only its SHA-256 is configured: the settings hold no secret."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the token (`narset token` prints it)")


class CertificateSetting(_Identity):
    """A client certificate Narset accepts as an identity under mutual TLS: one that `tls_client_ca`
    signed, naming `subject` as its subject common name or one of its subject alternative names."""

    subject: str = Field(min_length=1, description="the certificate's common name, or a DNS, URI or email SAN")


class ServerSettings(BaseSettings):
    """Settings of `narset serve`."""

    model_config = SettingsConfigDict(env_prefix="NARSET_", extra="forbid")

    address: str = Field("127.0.0.1:50051", description="host:port to listen on; port 0 picks a free one")
    db_path: Path | str = Field(
        Path("narset.db"),
        description="SQLite database file (created if missing), or a postgresql:// URL: a database that several "
        "replicas share (keep its password out of the URL: PGPASSWORD, a passfile)",
    )
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal", description="normal: survives kill -9; full: also power loss, an fsync per commit"
    )
    postgres_lock_timeout_s: float = Field(
        LOCK_TIMEOUT_S,
        gt=0,
        le=60,
        description="PostgreSQL: the longest a call waits for a lock (lock_timeout), the replica with it, health "
        "checks included; then the call answers UNAVAILABLE (STORE_UNAVAILABLE), nothing changed",
    )
    grace_s: float = Field(5.0, gt=0, description="seconds in-flight RPCs get to finish at shutdown")
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES,
        ge=1024,
        le=MAX_MESSAGE_BYTES,
        description="largest request accepted and answer sent (at most what every client receives)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    tokens: tuple[TokenSetting, ...] = Field((), description="bearer tokens; none: every caller is anonymous")
    tls_cert: Path | None = Field(None, description="PEM certificate chain of the server (with tls_key: TLS)")
    tls_key: Path | None = Field(None, description="PEM private key of the server")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: clients must show a certificate it signed")
    client_certificates: tuple[CertificateSetting, ...] = Field(
        (), description="client certificates (under mutual TLS) that identify a caller without a token"
    )
    insecure: bool = Field(False, description="allow a non-loopback address without TLS and tokens")
    stale_session_s: float = Field(
        600.0, gt=0, description="a worker token may take over a job whose session was silent this long"
    )
    metrics_address: str | None = Field(
        None, description="host:port of the Prometheus endpoint (/metrics); none: no endpoint; port 0: any free port"
    )
    metrics_job_labels: bool = Field(False, description="label the store's counts by job id (one series per job)")

    @field_validator("db_path", mode="before")
    @classmethod
    def _store_location(cls, value: object) -> object:
        """A postgresql:// URL stays a string; anything else is an SQLite file's path."""
        if isinstance(value, str) and not is_postgres_url(value):
            if "://" in value:
                raise ValueError(f"must be an SQLite file or a postgresql:// URL, got {value.split('://')[0]}://...")
            return Path(value)
        return value

    @field_validator("address", "metrics_address")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port with a port in 0..65535, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for what in ("name", "sha256"):
            values = [getattr(t, what) for t in self.tokens]
            if len(set(values)) != len(values):
                raise ValueError(f"tokens: two tokens have the same {what}")
        if self.client_certificates and self.tls_client_ca is None:
            raise ValueError("client_certificates need mutual TLS: tls_client_ca, tls_cert and tls_key")
        subjects = [c.subject for c in self.client_certificates]
        if len(set(subjects)) != len(subjects):
            raise ValueError("client_certificates: two entries have the same subject")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file (if any) comes from model_config["toml_file"], set by `load_settings`.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def _is_loopback(host: str) -> bool:
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure_error(settings: ServerSettings) -> str | None:
    """Why Narset would listen unprotected where others can reach it, or None.

    Narset rewrites the weights of running jobs: beyond loopback it needs TLS and tokens, unless the
    operator says `insecure` explicitly (a private network with other protection).
    """
    metrics = settings.metrics_address
    if metrics is not None and not _is_loopback(metrics.rpartition(":")[0]) and not settings.insecure:
        # The endpoint has neither TLS nor tokens, and what it shows (jobs, load, refusals) is worth hiding.
        return (
            f"refusing to serve metrics on {metrics}: the endpoint is plain HTTP without tokens. Serve them on "
            f"loopback (behind a proxy or a sidecar scraper), or pass --insecure (NARSET_INSECURE=true)"
        )
    host = settings.address.rpartition(":")[0]
    identities = settings.tokens or settings.client_certificates
    missing = [what for what, on in (("TLS", settings.tls_cert), ("tokens", identities)) if not on]
    if _is_loopback(host) or not missing or settings.insecure:
        return None
    return (
        f"refusing to listen on {settings.address} without {' and '.join(missing)}: anyone who reaches it could "
        f"deploy, fold or prune on every job. Configure tls_cert/tls_key and tokens, listen on loopback, or pass "
        f"--insecure (NARSET_INSECURE=true) to accept the risk"
    )


def load_settings(config_file: Path | None = None, **overrides: object) -> ServerSettings:
    """Settings from `config_file` (TOML), the environment and explicit `overrides` (flags)."""
    settings_cls = ServerSettings
    if config_file is not None:
        if not config_file.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")

        class FileSettings(ServerSettings):
            model_config = SettingsConfigDict(toml_file=config_file)

        settings_cls = FileSettings
    return settings_cls(**{k: v for k, v in overrides.items() if v is not None})
