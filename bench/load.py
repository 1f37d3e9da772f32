"""Load: many submissions from concurrent clients, through to the end of every job.

Starts a private Redis, the gateway (``midiffusion serve --workers 2``: two uvicorn processes)
and two ``celery -A worker.app worker -P solo`` processes running a tiny model, then 32 clients
(each its own API key, as separate integrations are) submit 1,000 small slices in all and poll
until every job has ended. Checks, and prints:

- none lost: every 202 has a job record, and every job reaches a final state;
- none duplicated: one record per submission (each carries its own Idempotency-Key), every job
  started once, one output file per succeeded job;
- throughput (submissions per second, jobs finished per second) and latency percentiles (of
  ``POST /translate``, and of a job from submission to its end).

    python bench/load.py                          # 1,000 submissions, 32 clients
    python bench/load.py --submissions 200 --clients 8

``tests/test_load.py`` runs the same code with fewer submissions and asserts the invariants;
speed figures are this script's to print, never a test's to assert.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python bench/load.py` from a checkout
FINAL = ("succeeded", "failed", "cancelled")
RESULT = re.compile(r"^[0-9a-f]{32}\.(nii\.gz|png)$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def tiny_model_store(workdir: Path) -> Path:
    """A store holding one small, briefly trained model (the test suite's tiny model)."""
    from midiffusion.training.config import TrainConfig
    from midiffusion.training.data import load_training_slices
    from midiffusion.training.export import export_model
    from midiffusion.training.trainer import Trainer
    from model_store import ModelStore

    grid, n = 32, 12
    yy, xx = np.mgrid[:grid, :grid]
    vol = np.zeros((grid, grid, n), np.float32)
    for k in range(n):
        r = grid * (0.25 + 0.02 * (k % 4))
        d2 = (yy - grid / 2) ** 2 + ((xx - grid / 2) * 1.2) ** 2
        vol[:, :, k] = 0.8 * (d2 < r * r) - 0.5 * (d2 < (r / 2) ** 2)
    data_dir = workdir / "train"
    data_dir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), data_dir / "train.nii.gz")
    config = TrainConfig.load("tiny")
    data, manifest = load_training_slices(data_dir, config.grid_size)
    run_dir = workdir / "run"
    Trainer(config, data, run_dir, manifest).fit(10, progress=False)
    weights = run_dir / "weights.safetensors"
    card = export_model(
        run_dir,
        name="tiny",
        target_modality="T1w",
        out_weights=weights,
        sampling={"sampler": "ddim", "steps": 2, "guidance": 1.0},
    )
    store = ModelStore(workdir / "models")
    store.publish(card, weights)
    return store.root


def slice_bytes() -> bytes:
    """One 32 x 32 slice: a disc with a brighter core (the work per job stays small, so the
    figures are about the service's path, not about sampling)."""
    yy, xx = np.mgrid[:32, :32]
    d2 = (yy - 16) ** 2 + (xx - 16) ** 2
    plane = ((d2 < 121) * 100.0 + (d2 < 25) * 60.0).astype(np.float32)
    return nib.Nifti1Image(plane, np.diag([1.0, 1.0, 3.0, 1.0])).to_bytes()


@dataclass
class Stack:
    base: str
    redis_url: str
    storage: Path
    keys: list[str]
    procs: list[subprocess.Popen] = field(default_factory=list)


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
    env.update(values, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


@contextlib.contextmanager
def running_stack(
    workdir: Path, clients: int, gateway_processes: int = 2, celery_workers: int = 2
) -> Iterator[Stack]:
    """Redis, the gateway and the Celery workers, as real processes; stopped on exit."""
    models = tiny_model_store(workdir / "model")
    port = _free_port()
    redis_port = _free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    storage = workdir / "storage"
    keys = [f"load-key-{i}" for i in range(clients)]
    stack = Stack(f"http://127.0.0.1:{port}", url, storage, keys)
    logs = workdir / "logs"
    logs.mkdir()
    common = {
        "MIDIFF_REDIS_URL": url,
        "MIDIFF_STORAGE_DIR": str(storage),
        "MIDIFF_MODEL_DIR": str(models),
        "MIDIFF_DEVICE": "cpu",
        "MIDIFF_WORKER_METRICS_PORT": "0",
    }

    def start(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
        with open(logs / log_name, "w") as log:
            proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        stack.procs.append(proc)
        return proc

    try:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        start(
            [
                binary,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            _env(),
            "redis.log",
        )
        _wait(lambda: _redis_up(url), 30, "redis-server")
        start(
            [
                sys.executable,
                "-m",
                "midiffusion.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(gateway_processes),
                "--log-level",
                "warning",
            ],
            _env(**common, MIDIFF_API_KEYS=",".join(keys), MIDIFF_RETRY_AFTER_S="1"),
            "gateway.log",
        )
        for i in range(celery_workers):
            start(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.app",
                    "worker",
                    "-P",
                    "solo",
                    "-l",
                    "warning",
                    "-n",
                    f"load{i}@%h",
                    "--without-mingle",
                    "--without-gossip",
                    "--without-heartbeat",
                ],
                _env(**common),
                f"worker{i}.log",
            )
        _wait(lambda: _ready(stack.base), 120, "the gateway")
        yield stack
    finally:
        for proc in reversed(stack.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in stack.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _redis_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@dataclass
class LoadReport:
    submissions: int
    clients: int
    accepted: dict[str, str] = field(default_factory=dict)  # job id -> key
    post_latency: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    retried_429: int = 0
    submit_seconds: float = 0.0
    drain_seconds: float = 0.0
    jobs: dict[str, dict] = field(default_factory=dict)  # job id -> final job document
    records: int = 0
    outputs: int = 0

    # -- the invariants
    def lost(self) -> list[str]:
        return [j for j in self.accepted if self.jobs.get(j, {}).get("state") not in FINAL]

    def duplicated(self) -> int:
        """Submissions that made more than one record, and jobs started more than once."""
        extra_records = self.records - len(self.accepted)
        run_twice = sum(1 for j in self.jobs.values() if j["attempts"] != 1)
        return max(0, extra_records) + run_twice + (self.outputs - self.succeeded())

    def succeeded(self) -> int:
        return sum(1 for j in self.jobs.values() if j["state"] == "succeeded")

    def job_seconds(self) -> list[float]:
        out = []
        for job in self.jobs.values():
            t = job["timings"]
            if t["finished_at"]:
                end = datetime.fromisoformat(t["finished_at"])
                out.append((end - datetime.fromisoformat(t["created_at"])).total_seconds())
        return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


async def _client(
    stack: Stack, key: str, count: int, offset: int, body: bytes, report: LoadReport
) -> None:
    headers = {"X-API-Key": key}
    async with httpx.AsyncClient(base_url=stack.base, headers=headers, timeout=120) as client:
        for i in range(count):
            while True:
                started = time.perf_counter()
                response = await client.post(
                    "/translate",
                    files={"file": ("slice.nii", body)},
                    data={"steps": "2", "seed": str(offset + i)},
                    headers={"Idempotency-Key": f"{key}-{i}"},
                )
                report.post_latency.append(time.perf_counter() - started)
                report.statuses[response.status_code] += 1
                if response.status_code == 429:  # this key's queue is full: wait as told
                    report.retried_429 += 1
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                    continue
                break
            if response.status_code == 202:
                report.accepted[response.json()["id"]] = key


async def _drain(stack: Stack, report: LoadReport, timeout: float) -> None:
    clients = {
        key: httpx.AsyncClient(base_url=stack.base, headers={"X-API-Key": key}, timeout=60)
        for key in stack.keys
    }
    try:
        pending = set(report.accepted)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for job_id in sorted(pending)[:64]:  # a bounded poll per round
                job = (await clients[report.accepted[job_id]].get(f"/jobs/{job_id}")).json()
                if job["state"] in FINAL:
                    report.jobs[job_id] = job
                    pending.discard(job_id)
            if pending:
                await asyncio.sleep(0.5)
    finally:
        for client in clients.values():
            await client.aclose()


def run_load(
    workdir: Path, submissions: int, clients: int, drain_timeout: float = 1800
) -> LoadReport:
    report = LoadReport(submissions, clients)
    body = slice_bytes()
    with running_stack(workdir, clients) as stack:
        shares = [submissions // clients + (i < submissions % clients) for i in range(clients)]
        offsets = [sum(shares[:i]) for i in range(clients)]

        async def submit_all() -> None:
            await asyncio.gather(
                *(
                    _client(stack, key, n, off, body, report)
                    for key, n, off in zip(stack.keys, shares, offsets, strict=True)
                )
            )

        started = time.perf_counter()
        asyncio.run(submit_all())
        report.submit_seconds = time.perf_counter() - started
        asyncio.run(_drain(stack, report, drain_timeout))
        report.drain_seconds = time.perf_counter() - started
        client = redis.Redis.from_url(stack.redis_url)
        report.records = sum(1 for _ in client.scan_iter("midiff:job:*"))
        # results only: a result's uncertainty map lies beside it
        report.outputs = sum(1 for p in (stack.storage / "out").iterdir() if RESULT.match(p.name))
    return report


def print_report(report: LoadReport) -> None:
    post = percentiles(report.post_latency)
    jobs = percentiles(report.job_seconds())
    print(
        f"submissions {report.submissions} from {report.clients} clients: "
        f"statuses {dict(report.statuses)}, 429 retries {report.retried_429}"
    )
    print(
        f"accepted {len(report.accepted)}, records {report.records}, "
        f"lost {len(report.lost())}, duplicated {report.duplicated()}, "
        f"succeeded {report.succeeded()}, outputs {report.outputs}"
    )
    print(
        f"submit: {report.submit_seconds:.1f} s, "
        f"{len(report.accepted) / report.submit_seconds:.1f} submissions/s; POST latency "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in post.items())
    )
    print(
        f"all final after {report.drain_seconds:.1f} s: "
        f"{len(report.jobs) / report.drain_seconds:.2f} jobs/s; submission-to-end latency "
        + ", ".join(f"{k} {v:.1f} s" for k, v in jobs.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="midiff-load-"))
    try:
        report = run_load(workdir, args.submissions, args.clients)
        print_report(report)
        ok = not report.lost() and not report.duplicated()
        print("invariants:", "held" if ok else "BROKEN")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"work folder: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
