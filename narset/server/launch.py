"""Run `narset serve` as a child process and wait until it listens (used by the demo, benchmarks, tests)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ServeProcess", "free_port"]


def free_port() -> int:
    """A loopback port free now (another process may take it before it is bound: be ready to try again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """`narset serve` as a real child process (by default on a free loopback port); JSON logs go to `log_path`.

    `db_path`: the SQLite file, or a postgresql:// URL; with a URL, `files` names the log and
    address files (`<files>.log`, `<files>.address`), which otherwise sit beside the SQLite file.
    `config`: a TOML settings file (`narset serve --config`), e.g. with tokens.
    """

    def __init__(
        self,
        db_path: Path | str,
        grace_s: float = 3.0,
        log_level: str = "info",
        timeout_s: float = 60.0,
        address: str = "127.0.0.1:0",
        files: Path | None = None,
        config: Path | None = None,
    ) -> None:
        if files is None:
            if not isinstance(db_path, Path):
                raise ValueError("a postgresql:// store needs `files`, the stem of the log and address files")
            files = db_path
        self.log_path = files.with_suffix(".log")
        ready = files.with_suffix(".address")
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "narset", "serve", "--address", address, "--db", str(db_path)]
        argv += ["--grace", str(grace_s), "--log-level", log_level, "--ready-file", str(ready)]
        argv += ["--config", str(config)] if config is not None else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"narset serve exited with {self.process.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"narset serve did not listen within {timeout_s} s; see {self.log_path}")
            time.sleep(0.02)
        self.address = ready.read_text().strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful shutdown) and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)
