"""Run `narset serve` as a child process and wait until it listens (used by the demo, benchmarks, tests)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["ServeProcess"]


class ServeProcess:
    """`narset serve` as a real child process on a free loopback port."""

    def __init__(self, db_path: Path, grace_s: float = 3.0, log_level: str = "info") -> None:
        argv = [sys.executable, "-m", "narset", "serve", "--address", "127.0.0.1:0", "--db", str(db_path)]
        argv += ["--grace", str(grace_s), "--log-format", "json", "--log-level", log_level]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        self.address = self._wait_started()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_started(self, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError(f"narset serve exited with {self.process.wait()} before listening")
            record = json.loads(line)
            if record.get("event") == "server.started":
                # Keep draining stderr so the server never blocks on a full pipe.
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return record["address"]
        raise TimeoutError("narset serve did not start listening")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)
