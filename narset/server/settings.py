"""Typed server configuration: defaults < TOML file < NARSET_* environment < command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["ServerSettings", "load_settings"]


class ServerSettings(BaseSettings):
    """Settings of `narset serve`."""

    model_config = SettingsConfigDict(env_prefix="NARSET_", extra="forbid")

    address: str = Field("127.0.0.1:50051", description="host:port to listen on; port 0 picks a free one")
    db_path: Path = Field(Path("narset.db"), description="SQLite database file (created if missing)")
    sqlite_synchronous: Literal["normal", "full"] = Field(
        "normal", description="normal: survives kill -9; full: also power loss, an fsync per commit"
    )
    grace_s: float = Field(5.0, gt=0, description="seconds in-flight RPCs get to finish at shutdown")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest request accepted")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port with a port in 0..65535, got {value!r}")
        return value

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
