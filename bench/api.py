"""Submission throughput and latency of ``POST /translate`` (prints figures; asserts nothing
about speed).

Starts the gateway (uvicorn, in a subprocess) against a real Redis, with no worker, so every
accepted job stays queued and can be checked: 32 concurrent clients upload a 5 MB NIfTI each
time, then every 202 must have a job record and a queued Celery task (no job lost).

Two phases: ``closed`` (each client submits again as soon as it has an answer: the gateway's
capacity) and ``paced`` (the same 32 clients, together offering ``--rate`` submissions per
second: latency at a given load). All traffic is on 127.0.0.1.

    python bench/api.py                     # Redis at redis://127.0.0.1:6379/14
    python bench/api.py --requests 400 --rate 60 --redis-url redis://127.0.0.1:6380/3

Clients are a minimal asyncio HTTP/1.1 client sending a pre-built request, so that on a small
machine the figures describe the gateway rather than the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python bench/api.py` from a checkout
API_KEY = "bench-key"
QUEUE = "midiffusion"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_nifti(path: Path) -> Path:
    """128 x 128 x 80 float32: 5.0 MiB uncompressed, a realistic small MR volume's size."""
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (128, 128, 80)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.5, 1.0])), path)
    return path


def multipart_body(path: Path, boundary: str, seed: int) -> bytes:
    """Pre-built once per seed: clients spend no CPU on encoding (the gateway is measured)."""
    return b"".join(
        [
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="seed"\r\n\r\n{seed}\r\n'.encode(),
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode(),
            path.read_bytes(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


def ensure_model_store(requested: str | None, workdir: Path) -> Path:
    """The gateway reads model cards to resolve ``model``. Use the given or shipped store; if
    it is empty, publish a small randomly initialised model (submission never loads weights)."""
    from model_store import ModelStore

    store = ModelStore(requested)
    if store.list():
        return store.root
    from safetensors.torch import save_file

    from midiffusion.diffusion.conditioning import ConditioningSpec
    from midiffusion.diffusion.schedules import DDPMSchedule
    from midiffusion.model.unet import UNet, UNetConfig

    cfg = UNetConfig(
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        grid_size=32,
    )
    net = UNet(cfg)
    weights = workdir / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    card = {
        "name": "bench",
        "target_modality": "T1w",
        "grid_size": 32,
        "parameters": sum(int(p.numel()) for p in net.parameters()),
        "network": cfg.to_dict(),
        "schedule": DDPMSchedule().to_dict(),
        "conditioning": ConditioningSpec().to_dict(),
        "sampling": {"sampler": "ddim", "steps": 4},
        "training": {"note": "untrained; for the submission benchmark only"},
    }
    bench_store = ModelStore(workdir / "models")
    bench_store.publish(card, weights)
    return bench_store.root


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams.

    httpx spends about as much CPU per 5 MB upload as the gateway does; on a 2-core machine
    that would measure the client. This one writes a pre-built request and reads the answer,
    close to what a load generator written in C costs.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])
        )
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.writer.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def raw_request(port: int, body: bytes, boundary: str) -> bytes:
    head = (
        f"POST /translate HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {API_KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def run_phase(
    name: str,
    port: int,
    requests_raw: list[bytes],
    *,
    clients: int,
    requests: int,
    rate: float,
) -> Phase:
    phase = Phase(name)
    counter = iter(range(requests))
    started = time.perf_counter()

    async def client_loop() -> None:
        client = RawClient("127.0.0.1", port)
        try:
            while (n := next(counter, None)) is not None:
                if rate > 0:  # open loop: request n is due at n / rate, whoever sends it
                    delay = started + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t0 = time.perf_counter()
                try:
                    status, body = await client.request(requests_raw[n % len(requests_raw)])
                except (OSError, asyncio.IncompleteReadError) as exc:
                    phase.errors.append(f"transport: {type(exc).__name__}: {exc}")
                    client = RawClient("127.0.0.1", port)
                    continue
                phase.latencies.append(time.perf_counter() - t0)
                phase.statuses[status] = phase.statuses.get(status, 0) + 1
                if status == 202:
                    phase.job_ids.append(json.loads(body)["id"])
                elif len(phase.errors) < 5:
                    phase.errors.append(f"{status}: {body[:200]!r}")
        finally:
            await client.close()

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    phase.elapsed = time.perf_counter() - started
    return phase


def check_nothing_lost(client: redis.Redis, job_ids: list[str]) -> tuple[int, int, int]:
    """(records found, tasks found, duplicates) for the accepted job ids."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"midiff:job:{job_id}", "state")
    states = pipe.execute()
    records = sum(1 for s in states if s == b"queued")
    queued = [
        json.loads(m)["headers"]["id"] for m in client.lrange(QUEUE, 0, -1)
    ]  # task id = job id
    for m in client.lrange(QUEUE, 0, 0):  # and a task carries the id, never image bytes
        args = json.loads(base64.b64decode(json.loads(m)["body"]))[0]
        assert len(args) == 1 and isinstance(args[0], str)
    wanted = set(job_ids)
    return records, len(wanted & set(queued)), len(queued) - len(set(queued))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def report(phase: Phase, size: int, offered: float) -> None:
    ok = phase.statuses.get(202, 0)
    lat = [x * 1000 for x in phase.latencies]
    print(f"\n[{phase.name}] " + (f"offered {offered:.0f}/s" if offered else "closed loop"))
    print(f"  submissions: {ok} accepted (202) of {len(lat)} answered in {phase.elapsed:.2f} s")
    print(
        f"  statuses: {dict(sorted(phase.statuses.items()))}; transport errors: "
        f"{len([e for e in phase.errors if ':' in e and not e[:3].isdigit()])}"
    )
    print(
        f"  throughput: {ok / phase.elapsed:.1f} submissions/s "
        f"({ok * size / phase.elapsed / 2**20:.0f} MiB/s of uploads)"
    )
    if lat:
        print(
            f"  latency ms: p50 {pct(lat, 50):.0f}  p90 {pct(lat, 90):.0f}  "
            f"p99 {pct(lat, 99):.0f}  max {max(lat):.0f}  mean {statistics.fmean(lat):.0f}"
        )
    for err in phase.errors[:3]:
        print(f"  error: {err}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--redis-url", default=os.environ.get("MIDIFF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=320, help="per phase")
    parser.add_argument("--rate", type=float, default=50.0, help="offered load of the paced phase")
    parser.add_argument(
        "--uvicorn-workers", type=int, default=2, help="gateway processes (one per core)"
    )
    parser.add_argument("--model-dir", default=os.environ.get("MIDIFF_MODEL_DIR"))
    parser.add_argument("--phases", default="closed,paced")
    args = parser.parse_args()

    rclient = redis.Redis.from_url(args.redis_url)
    rclient.ping()
    if rclient.llen(QUEUE) or next(rclient.scan_iter("midiff:*"), None):
        print(f"{args.redis_url} already holds midiffusion keys; use an empty database")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="midiff-bench-"))
    proc = None
    try:
        model_dir = ensure_model_store(args.model_dir, workdir)
        sample = make_nifti(workdir / "bench_5mb.nii")
        size = sample.stat().st_size
        boundary = uuid.uuid4().hex
        port = _free_port()
        requests_raw = [
            raw_request(port, multipart_body(sample, boundary, seed), boundary) for seed in range(4)
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
        env.update(
            MIDIFF_REDIS_URL=args.redis_url,
            MIDIFF_STORAGE_DIR=str(workdir / "storage"),
            MIDIFF_MODEL_DIR=str(model_dir),
            MIDIFF_API_KEYS=API_KEY,
            MIDIFF_CLEANUP_INTERVAL_S="0",
            PYTHONPATH=str(REPO),
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "service.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(args.uvicorn_workers),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print("the gateway did not become ready")
                return 1
            time.sleep(0.2)

        print(
            f"POST /translate, {size / 2**20:.2f} MiB NIfTI (128x128x80 float32), "
            f"{args.clients} concurrent clients, {args.requests} submissions per phase, "
            f"uvicorn workers: {args.uvicorn_workers}, no job worker (jobs stay queued), "
            f"cpus: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}"
        )
        all_ids: list[str] = []
        for name in args.phases.split(","):
            rate = args.rate if name == "paced" else 0.0
            server_cpu0, client_cpu0 = _cpu_seconds(proc.pid), time.process_time()
            phase = asyncio.run(
                run_phase(
                    name,
                    port,
                    requests_raw,
                    clients=args.clients,
                    requests=args.requests,
                    rate=rate,
                )
            )
            report(phase, size, rate)
            server_cpu = _cpu_seconds(proc.pid) - server_cpu0
            client_cpu = time.process_time() - client_cpu0
            answered = max(1, len(phase.latencies))
            print(
                f"  cpu per submission: gateway {1000 * server_cpu / answered:.1f} ms, "
                f"benchmark clients {1000 * client_cpu / answered:.1f} ms"
            )
            all_ids += phase.job_ids
        records, tasks, duplicates = check_nothing_lost(rclient, all_ids)
        lost = len(all_ids) - min(records, tasks)
        print(
            f"\nno job lost: {len(all_ids)} accepted, {records} job records queued, {tasks} "
            f"tasks on the queue, {duplicates} duplicate tasks -> lost: {lost}"
        )
        return 0 if lost == 0 and duplicates == 0 else 1
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        # Leave the shared Redis as found: only this run's keys are removed.
        for key in rclient.scan_iter("midiff:*"):
            rclient.delete(key)
        rclient.delete(QUEUE)
        for key in rclient.scan_iter("_kombu.binding*"):
            rclient.delete(key)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
