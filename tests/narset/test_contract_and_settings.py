"""The wire contract's generated code matches proto/, and server settings layer file < env < flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from narset.server.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos():
    """Regenerating narset/v1 from proto/ produces exactly the committed files."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_settings_file_then_environment_then_flags(tmp_path, monkeypatch):
    """A TOML file sets values, NARSET_* overrides it, explicit flags override both."""
    config = tmp_path / "narset.toml"
    config.write_text('address = "127.0.0.1:7001"\ngrace_s = 2.5\nlog_level = "warning"\n')
    monkeypatch.setenv("NARSET_GRACE_S", "4")
    settings = load_settings(config, db_path=tmp_path / "x.db")
    assert (settings.address, settings.grace_s, settings.log_level) == ("127.0.0.1:7001", 4.0, "warning")
    assert settings.db_path == tmp_path / "x.db"
    assert load_settings(config, address="127.0.0.1:0").address == "127.0.0.1:0"


def test_db_is_an_sqlite_file_or_a_postgresql_url(tmp_path, monkeypatch):
    """`db_path` (`--db`, NARSET_DB_PATH): a postgresql:// URL is kept as written, anything else is a file;
    another scheme is refused."""
    url = "postgresql://narset@db.example:5432/narset?sslmode=verify-full"
    assert load_settings(None, db_path=url).db_path == url
    config = tmp_path / "narset.toml"
    config.write_text('db_path = "postgres://narset@db/narset"\n')
    assert load_settings(config).db_path == "postgres://narset@db/narset"
    monkeypatch.setenv("NARSET_DB_PATH", "relative/narset.db")
    assert load_settings(None).db_path == Path("relative/narset.db")
    with pytest.raises(ValidationError, match="postgresql:// URL"):
        load_settings(None, db_path="mysql://narset@db/narset")


def test_settings_refuse_bad_values(tmp_path):
    """A bad address, a non-positive grace, an unknown key and a missing file are refused by name."""
    with pytest.raises(ValidationError, match="address"):
        load_settings(None, address="localhost")
    with pytest.raises(ValidationError, match="grace_s"):
        load_settings(None, grace_s=0)
    config = tmp_path / "narset.toml"
    config.write_text("adress = '127.0.0.1:1'\n")
    with pytest.raises(ValidationError, match="adress"):
        load_settings(config)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_settings(tmp_path / "missing.toml")


def test_ci_runs_exactly_the_readme_test_command():
    """`.ci/run` executes the README's fresh-machine test command verbatim, so green CI proves the README."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line]
    assert len(commands) == 1
    assert commands[0] in (ROOT / ".ci" / "run").read_text().splitlines()
