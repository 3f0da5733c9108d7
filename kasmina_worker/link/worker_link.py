"""The training job's line to Narset: a child process that owns every gRPC object.

A training process must hold no gRPC state when it forks (DataLoader workers with the fork start
method abort otherwise), so the job's rank 0 never imports a channel: it starts
`python -m kasmina_worker.link ADDRESS` once and exchanges length-prefixed protobuf frames with it
over pipes. The child keeps one channel open across boundaries and applies a deadline to each RPC;
the parent bounds every wait as well, so a hung or absent Narset costs at most `timeout_s` (plus a
half-second margin) per call. The child reaches Narset as every client does (`narset.contract.connection`):
its token and TLS files come from its environment, where the parent puts an explicit token.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import time
from typing import BinaryIO

from google.protobuf.message import Message

from narset.contract.connection import TOKEN_ENV
from narset.v1 import worker_service_pb2 as pb

__all__ = ["LinkError", "WorkerLink"]

_HEADER = struct.Struct(">IB")  # payload length, kind
_RPCS = {
    1: ("Attach", pb.AttachRequest, pb.AttachResponse),
    2: ("ReportBoundary", pb.ReportBoundaryRequest, pb.ReportBoundaryResponse),
    3: ("Detach", pb.DetachRequest, pb.DetachResponse),
}
_KIND_BY_RPC = {name: kind for kind, (name, _, _) in _RPCS.items()}
_OK, _ERROR = 0, 1
STARTUP_ALLOWANCE_S = 15.0  # a fresh link process imports grpc before it can answer
FRAME_MARGIN_S = 0.5  # the child's own deadline expires first, so its answer frame is not cut off


class LinkError(Exception):
    """An exchange that did not succeed. `code` is a gRPC status name, or TIMEOUT / LINK_DOWN.

    A refusal also carries `reason`, its stable code (narset.contract.reasons), and `field`; both are
    "" otherwise. Decide on `reason`, never on `details`, whose wording may change.
    """

    def __init__(self, code: str, details: str, reason: str = "", field: str = "") -> None:
        self.code = code
        self.details = details
        self.reason = reason
        self.field = field
        super().__init__(f"{code}: {details}")

    @property
    def refused(self) -> bool:
        """Narset answered and said no (the request itself is wrong), as opposed to being unreachable."""
        return self.code not in ("TIMEOUT", "LINK_DOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


def _write_frame(stream: BinaryIO, kind: int, payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload), kind) + payload)
    stream.flush()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("link closed")
        data += chunk
    return data


def _read_frame(stream: BinaryIO) -> tuple[int, bytes]:
    length, kind = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    return kind, _read_exactly(stream, length)


class WorkerLink:
    """Parent side: starts the link process and makes bounded calls through it. Not thread-safe."""

    def __init__(self, address: str, timeout_s: float = 5.0, token: str | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.address = address
        self.timeout_s = timeout_s
        # The token travels in the child's environment, never its command line (visible to every user).
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", **({TOKEN_ENV: token} if token else {})}
        self._process: subprocess.Popen | None = None
        self._answered = False  # has the current link process answered once?

    def start(self) -> None:
        """Start the link process now (it also starts on the first call)."""
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "kasmina_worker.link", self.address, str(self.timeout_s)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self._env,
            )
            self._answered = False

    def call(self, rpc: str, request: Message) -> Message:
        """Send `request` to Narset's WorkerService.`rpc`; the response, or LinkError within the timeout."""
        kind = _KIND_BY_RPC[rpc]
        self.start()
        process = self._process
        allowance = FRAME_MARGIN_S + (0.0 if self._answered else STARTUP_ALLOWANCE_S)
        deadline = time.monotonic() + self.timeout_s + allowance
        try:
            _write_frame(process.stdin, kind, request.SerializeToString())
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
            if not ready:
                self._restart()
                raise LinkError("TIMEOUT", f"no answer from the link to {self.address} in {self.timeout_s:g} s")
            status, payload = _read_frame(process.stdout)
        except (BrokenPipeError, EOFError, OSError) as error:
            self._restart()
            raise LinkError("LINK_DOWN", f"link process to {self.address} failed: {error}") from None
        self._answered = True
        if status == _ERROR:
            problem = json.loads(payload)
            raise LinkError(problem["code"], problem["details"], problem["reason"], problem["field"])
        return _RPCS[kind][2].FromString(payload)

    def _restart(self) -> None:
        """A link that timed out may answer late and desynchronise the frames: replace it."""
        self.close()

    def close(self) -> None:
        """Stop the link process; safe twice."""
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve_link(address: str, timeout_s: float) -> None:
    """Child side: answer frames from stdin with Narset's responses on stdout until stdin closes."""
    import grpc
    from grpc_status import rpc_status

    from narset.contract.connection import Connection
    from narset.contract.reasons import read_reason
    from narset.v1 import worker_service_pb2_grpc

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Reconnect quickly once Narset is back: the job only waits at boundaries, never in backoff.
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
    connection = Connection.resolve()
    with connection.channel(address, options) as channel:
        stub = worker_service_pb2_grpc.WorkerServiceStub(channel)
        while True:
            try:
                kind, payload = _read_frame(stdin)
            except EOFError:
                return
            name, request_type, _ = _RPCS[kind]
            try:
                # wait_for_ready: while Narset is away a call waits (bounded) for the channel to
                # reconnect instead of failing at once during the reconnect backoff.
                response = getattr(stub, name)(
                    request_type.FromString(payload),
                    timeout=timeout_s,
                    wait_for_ready=True,
                    metadata=connection.metadata,
                )
                _write_frame(stdout, _OK, response.SerializeToString())
            except grpc.RpcError as error:
                reason, field = read_reason(rpc_status.from_call(error))
                problem = {
                    "code": error.code().name,
                    "details": error.details() or "",
                    "reason": reason,
                    "field": field,
                }
                _write_frame(stdout, _ERROR, json.dumps(problem).encode())
