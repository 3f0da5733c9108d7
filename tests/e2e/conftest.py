"""End-to-end fixtures: `narset serve` as a separate process, per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from narset.server.launch import ServeProcess


@pytest.fixture
def narset_server(tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(tmp_path / "narset.db")
    yield server
    if server.process.poll() is None:
        server.terminate()
