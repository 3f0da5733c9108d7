"""Control-plane throughput: N simulated jobs attach to a real `narset serve` and exchange boundary
reports as fast as they can for a fixed time.

    python benchmarks/control_plane.py --jobs 200 --seconds 20
    python benchmarks/control_plane.py --jobs 200 --seconds 20 --db postgresql://narset@127.0.0.1:5432/bench
    python benchmarks/control_plane.py --jobs 200 --seconds 20 --db postgresql://... --replicas 2

`--db sqlite` (the default) is a fresh SQLite file; a postgresql:// URL names an empty database (or
schema) that `--replicas` serve processes share, each job's reports going to the replicas in turn.

Each job is rank 0 of a training job as Narset sees it: it attaches with a 24-module tree, then
reports boundary after boundary with a probe loss, metrics, two live scaffolds with full gate
telemetry and region signals, acknowledging every command it receives. One deploy per job is
submitted through the operator API during the run, so the ledger and decision paths are exercised.
Prints reports/s, exchange latency p50/p99 and the server's resident memory (peak and at the end).

Then, in the same run, the ceiling: a bare `grpc.aio` unary echo server (no store, no logic) in its
own process, called by the same number of clients with a payload the size of a report, for the same
time; the ratio reports/s over echo calls/s says how much of what gRPC itself allows on this machine
the control plane reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from narset.server.launch import ServeProcess
from narset.store import is_postgres_url
from narset.v1 import (
    command_pb2,
    job_pb2,
    operator_service_pb2,
    operator_service_pb2_grpc,
    telemetry_pb2,
    worker_service_pb2,
    worker_service_pb2_grpc,
)


def attach_request(job_id: str) -> worker_service_pb2.AttachRequest:
    modules = [
        job_pb2.ModuleInfo(
            name=f"blocks.{block}.{name}",
            type="Linear",
            in_features=256,
            out_features=256,
            parameters=[job_pb2.ParameterInfo(name="weight", shape=[256, 256], dtype="float32")],
        )
        for block in range(8)
        for name in ("attn", "fc1", "fc2")
    ]
    regions = [job_pb2.Region(name=f"block{b}", patterns=[f"blocks.{b}.*"]) for b in range(8)]
    return worker_service_pb2.AttachRequest(job_id=job_id, world_size=8, modules=modules, regions=regions)


def scaffold(scaffold_id: str, module: str, boundary: int) -> telemetry_pb2.ScaffoldReport:
    return telemetry_pb2.ScaffoldReport(
        scaffold_id=scaffold_id,
        module=module,
        blueprint="lora",
        stage=telemetry_pb2.SCAFFOLD_STAGE_HOLD,
        alpha=0.5,
        age_ckpts=boundary,
        ttl_ckpts=10**6,
        gates=telemetry_pb2.GateTelemetry(
            transfer_rel_delta=0.001,
            foldability=0.99,
            jitter_p95=0.01,
            drift=0.01,
            diversity=0.9,
            step_time_ratio=1.01,
            memory_fraction=0.4,
        ),
    )


async def run_job(addresses: list[str], index: int, deadline: float, latencies: list[float]) -> int:
    """Job `index`: attach and submit through one replica, then report to each replica in turn."""
    job_id = f"job-{index:04d}"
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    try:
        workers = [worker_service_pb2_grpc.WorkerServiceStub(channel) for channel in channels]
        home = index % len(channels)
        operator = operator_service_pb2_grpc.OperatorServiceStub(channels[home])
        session = (await workers[home].Attach(attach_request(job_id))).session_id
        deploy = command_pb2.AdaptationCommand(command_id=f"{job_id}-deploy", job_id=job_id)
        deploy.deploy.module, deploy.deploy.blueprint = "blocks.3.fc1", "lora"
        await operator.SubmitCommand(operator_service_pb2.SubmitCommandRequest(command=deploy))
        boundary, results, live = 0, [], []
        while time.monotonic() < deadline:
            boundary += 1
            request = worker_service_pb2.ReportBoundaryRequest(
                job_id=job_id,
                session_id=session,
                boundary=boundary,
                step=100 * boundary,
                probe_loss=1.0 / boundary,
                metrics={"val_loss": 1.0 / boundary, "lr": 3e-4},
                scaffolds=live,
                results=results,
                region_signals=[telemetry_pb2.RegionSignal(region=f"block{b}", update_ratio=1e-3) for b in range(8)],
                step_time_ms=120.0,
            )
            started = time.perf_counter()
            response = await workers[(home + boundary) % len(workers)].ReportBoundary(request)
            latencies.append(time.perf_counter() - started)
            results = [
                telemetry_pb2.CommandResult(
                    command_id=c.command_id, outcome=telemetry_pb2.COMMAND_OUTCOME_APPLIED, boundary=boundary
                )
                for c in response.commands
            ]
            if any(c.WhichOneof("action") == "deploy" for c in response.commands):
                live = [scaffold(f"{job_id}-deploy", "blocks.3.fc1", 1)]
            live = [scaffold(s.scaffold_id, s.module, s.age_ckpts + 1) for s in live]
        return boundary
    finally:
        for channel in channels:
            await channel.close()


ECHO_METHOD = "/bench.Echo/Echo"


async def serve_echo(ready: Path) -> None:
    """The ceiling's server: one unary method answering its request bytes, nothing else."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serialisers: bytes in, bytes out
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ready.write_text(f"127.0.0.1:{port}")
    await server.wait_for_termination()


async def echo_client(address: str, payload: bytes, deadline: float, latencies: list[float]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(ECHO_METHOD)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - started)


async def echo_ceiling(clients: int, payload: bytes, seconds: float, tmp: Path) -> tuple[float, list[float]]:
    """Calls/s and latencies of `clients` concurrent callers of an echo server in a child process."""
    ready = tmp / "echo.address"
    process = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(ready)])
    try:
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the echo server exited with {process.returncode}")
            await asyncio.sleep(0.02)
        address = ready.read_text()
        latencies: list[float] = []
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(echo_client(address, payload, deadline, latencies) for _ in range(clients)))
        return len(latencies) / (time.monotonic() - started), latencies
    finally:
        process.terminate()
        process.wait()


def quantile_ms(latencies: list[float], quantile: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))] * 1000


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of `pid` in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if args.db == "sqlite":
            servers = [ServeProcess(Path(tmp) / "narset.db", log_level="warning")]
        else:
            servers = []
            for i in range(args.replicas):  # one after the other: each migrates or finds the schema done
                servers.append(ServeProcess(args.db, log_level="warning", files=Path(tmp) / f"replica-{i}"))
        try:
            idle = [rss_kib(server.pid)[0] for server in servers]
            latencies: list[float] = []
            deadline = time.monotonic() + args.seconds
            started = time.monotonic()
            addresses = [server.address for server in servers]
            boundaries = await asyncio.gather(*(run_job(addresses, i, deadline, latencies) for i in range(args.jobs)))
            elapsed = time.monotonic() - started
            end = [rss_kib(server.pid) for server in servers]
        finally:
            for server in servers:
                server.terminate()
        payload = worker_service_pb2.ReportBoundaryRequest(
            job_id="job-0000",
            session_id="s" * 32,
            boundary=10,
            metrics={"val_loss": 0.1, "lr": 3e-4},
            scaffolds=[scaffold("job-0000-deploy", "blocks.3.fc1", 10)],
            region_signals=[telemetry_pb2.RegionSignal(region=f"block{b}", update_ratio=1e-3) for b in range(8)],
        ).SerializeToString()
        echo_rate, echo_latencies = await echo_ceiling(args.jobs, payload, args.seconds, Path(tmp))

    if args.db == "sqlite":  # `narset serve` takes NARSET_SQLITE_SYNCHRONOUS from the environment it inherits
        store = f"SQLite, a fresh file, synchronous={os.environ.get('NARSET_SQLITE_SYNCHRONOUS', 'normal')}"
    else:
        store = f"PostgreSQL, {len(servers)} replica(s)"
    print(f"store                {store}")
    print(f"jobs                 {args.jobs}")
    print(f"duration             {elapsed:.1f} s")
    print(f"reports              {len(latencies)} ({min(boundaries)}..{max(boundaries)} per job)")
    print(f"reports/s            {len(latencies) / elapsed:.0f}")
    mean = statistics.mean(latencies) * 1000
    p50, p99 = quantile_ms(latencies, 0.50), quantile_ms(latencies, 0.99)
    print(f"exchange latency     p50 {p50:.2f} ms   p99 {p99:.2f} ms   mean {mean:.2f} ms")
    for i, (idle_kib, (rss, peak)) in enumerate(zip(idle, end, strict=True)):
        name = "server RSS" if len(servers) == 1 else f"replica {i + 1} RSS"
        print(f"{name:<21}idle {idle_kib / 1024:.0f} MiB   end {rss / 1024:.0f} MiB   peak {peak / 1024:.0f} MiB")
    echo_p50 = quantile_ms(echo_latencies, 0.50)
    print(
        f"echo ceiling         {echo_rate:.0f} calls/s, p50 {echo_p50:.2f} ms "
        f"({len(payload)}-byte payload, as many clients)"
    )
    print(f"of the ceiling       {len(latencies) / elapsed / echo_rate:.2f}x (target >= 0.5x)")
    print("load average         {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200, help="simulated jobs (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    parser.add_argument(
        "--db",
        default="sqlite",
        help="sqlite (a fresh file, the default) or the postgresql:// URL of an empty database",
    )
    parser.add_argument("--replicas", type=int, default=1, help="narset serve processes on a PostgreSQL store")
    parser.add_argument("--serve-echo", type=Path, help=argparse.SUPPRESS)  # the echo server's child process
    args = parser.parse_args()
    if args.serve_echo:
        asyncio.run(serve_echo(args.serve_echo))
        return
    if args.db != "sqlite" and not is_postgres_url(args.db):
        parser.error(f"--db must be sqlite or a postgresql:// URL, got {args.db!r}")
    if args.replicas < 1 or (args.replicas > 1 and args.db == "sqlite"):
        parser.error("--replicas: at least 1, and more than 1 only on a PostgreSQL store (SQLite has one writer)")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
