"""Faults with real processes, in Redis mode: real ``redis-server`` and real
``celery -A worker.app worker -P solo`` processes running the tiny model.

- a worker killed (SIGKILL) mid-sampling: the job is delivered again and completes, once;
- Redis killed and restarted (appendonly, fsync always) while jobs are queued and running:
  none is lost, every one ends;
- a worker stopped (SIGTERM) mid-job: it releases the job at its next sampling step and exits,
  and another worker finishes it;
- a poison input that gets its worker killed by the kernel every time (over the worker's CPU
  limit, RLIMIT_CPU): it ends ``failed`` after the cap, with the reason, and other jobs flow;
- a full storage volume (a small tmpfs where mounting is allowed, else a file-size limit,
  RLIMIT_FSIZE, on the gateway and worker processes): the upload is refused with 507, and a job
  that cannot write its output fails cleanly, its input kept.

Every wait is on a state, with a generous deadline that only stops a hung test.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from test_service_support import (
    API_KEY,
    AUTH,
    REPO,
    WorkerProcess,
    gateway_settings,
    iter_partials,
    redis_db,
    stop_process,
    wait_for,
    wait_until_ready,
    worker_env,
    write_nifti,
)
from test_worker_e2e import Service

from service.app import create_app

pytestmark = pytest.mark.slow
FINAL = ("succeeded", "failed", "cancelled")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def succeeded_lines(workers: list[WorkerProcess], job_id: str) -> int:
    return sum(w.log().count(f"job {job_id} succeeded") for w in workers)


@contextlib.contextmanager
def gateway(url: str, storage: Path, model_root: Path, tmp: Path) -> Iterator[Service]:
    settings = gateway_settings(storage, model_root, url)
    # answers as a server gives them (an error handler's 503), not re-raised into the test
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Service(client, storage, tmp)


# ------------------------------------------------------------------------------ SIGKILL
def test_a_worker_killed_mid_sampling_is_replaced_and_the_job_completes_once(
    redis_url: str, tmp_path: Path, tiny_model_store
) -> None:
    url = redis_db(redis_url, 10)
    redis.Redis.from_url(url).flushdb()
    storage = tmp_path / "storage"
    # Redis hands an unacknowledged task to another worker after the visibility timeout.
    env = worker_env(url, storage, tiny_model_store.root, MIDIFF_VISIBILITY_TIMEOUT_S="2")
    with gateway(url, storage, tiny_model_store.root, tmp_path) as service:
        job = service.submit(write_nifti(tmp_path / "scan.nii.gz", (32, 32, 2)), steps=40)
        first = WorkerProcess(env, "first")
        service.wait_running(job["id"])
        first.kill()  # SIGKILL in mid-sampling: no ack, no clean-up

        second = WorkerProcess(env, "second")
        try:
            done = service.wait_state(job["id"], *FINAL, timeout=300)
        finally:
            second.stop()
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    record = service.client.app.state.ctx.jobs.get(job["id"])
    assert record.worker.startswith("second@")
    assert succeeded_lines([first, second], job["id"]) == 1  # translated and written once
    results = [p.name for p in (storage / "out").iterdir() if ".uncertainty." not in p.name]
    assert results == [f"{job['id']}.nii.gz"]
    assert list(iter_partials(storage)) == []
    assert service.client.get(f"/jobs/{job['id']}/result", headers=AUTH).status_code == 200


# ------------------------------------------------------------------------------ Redis restart
class RedisServer:
    """A private redis-server with appendonly on (fsync on every write), restartable on the
    same port and data directory."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_connect_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=30, what="redis-server to answer")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def test_a_redis_restart_loses_no_job(tmp_path: Path, tiny_model_store) -> None:
    server = RedisServer(tmp_path)
    storage = tmp_path / "storage"
    env = worker_env(server.url, storage, tiny_model_store.root)
    worker = None
    try:
        with gateway(server.url, storage, tiny_model_store.root, tmp_path) as service:
            source = write_nifti(tmp_path / "scan.nii.gz", (32, 32, 2))
            jobs = [service.submit(source, steps=s)["id"] for s in (30, 3, 3, 3)]
            worker = WorkerProcess(env, "solo")
            service.wait_running(jobs[0])  # one running, three queued
            server.kill()  # no shutdown: only what the append-only file holds survives
            with pytest.raises(redis.ConnectionError):
                redis.Redis.from_url(server.url, socket_connect_timeout=1).ping()
            polled = service.client.get(f"/jobs/{jobs[1]}", headers=AUTH)
            assert polled.status_code == 503  # the gateway says so, and does not hang
            assert polled.headers["content-type"] == "application/problem+json"
            assert "retry-after" in polled.headers
            time.sleep(2)  # the outage lasts a few sampling steps of the running job
            server.start()
            done = [service.wait_state(j, *FINAL, timeout=300) for j in jobs]
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    assert [d["state"] for d in done] == ["succeeded"] * 4, [d["error"] for d in done]
    assert all(succeeded_lines([worker], j) == 1 for j in jobs)


# ------------------------------------------------------------------------------ SIGTERM
def test_a_stopping_worker_releases_its_job_to_another(
    redis_url: str, tmp_path: Path, tiny_model_store
) -> None:
    url = redis_db(redis_url, 11)
    redis.Redis.from_url(url).flushdb()
    storage = tmp_path / "storage"
    env = worker_env(url, storage, tiny_model_store.root)  # the default (long) visibility
    workers = {name: WorkerProcess(env, name) for name in ("first", "second")}  # both idle
    try:
        with gateway(url, storage, tiny_model_store.root, tmp_path) as service:
            job = service.submit(write_nifti(tmp_path / "scan.nii.gz", (32, 32, 2)), steps=150)
            running = service.wait_running(job["id"])
            record = service.client.app.state.ctx.jobs.get(job["id"])
            stopping = workers[record.worker.split("@")[0]]
            other = next(w for w in workers.values() if w is not stopping)
            stopping.proc.send_signal(signal.SIGTERM)
            assert stopping.proc.wait(timeout=120) == 0  # a warm shutdown that did not wait
            released = service.job(job["id"])
            done = service.wait_state(job["id"], *FINAL, timeout=300)
            finished_by = service.client.app.state.ctx.jobs.get(job["id"]).worker
    finally:
        for w in workers.values():
            w.stop()
    assert f"job {job['id']} released" in stopping.log()
    assert running["progress"]["total"] > 0
    assert released["progress"]["step"] < running["progress"]["total"]  # left unfinished
    assert done["state"] == "succeeded", done["error"]
    assert done["attempts"] == 2
    assert finished_by.startswith(f"{other.name}@")
    assert succeeded_lines(list(workers.values()), job["id"]) == 1


# ------------------------------------------------------------------------------ poison
def _cpu_limit(seconds: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))

    return apply


def test_a_poison_input_fails_after_the_cap_and_others_flow(
    redis_url: str, tmp_path: Path, tiny_model_store
) -> None:
    """The poison is a volume far larger than the workers' CPU allowance can translate: the
    kernel kills (SIGXCPU) every worker that takes it, as an out-of-memory kill would. The test
    plays the supervisor (systemd, Kubernetes) and starts a fresh worker after each death."""
    url = redis_db(redis_url, 12)
    redis.Redis.from_url(url).flushdb()
    storage = tmp_path / "storage"
    env = worker_env(
        url,
        storage,
        tiny_model_store.root,
        MIDIFF_VISIBILITY_TIMEOUT_S="2",
        MIDIFF_MAX_DELIVERIES="2",
        OMP_NUM_THREADS="1",
    )
    workers: list[WorkerProcess] = []
    with gateway(url, storage, tiny_model_store.root, tmp_path) as service:
        poison = service.submit(write_nifti(tmp_path / "huge.nii.gz", (32, 32, 96)), steps=1000)
        small = write_nifti(tmp_path / "small.nii.gz", (32, 32, 2))
        others = [service.submit(small, steps=2)["id"] for _ in range(3)]
        everything = [poison["id"], *others]

        def all_final() -> bool:
            return all(service.job(j)["state"] in FINAL for j in everything)

        try:
            deadline = time.monotonic() + 600
            while not all_final():
                assert time.monotonic() < deadline, "jobs did not all end"
                if not workers or workers[-1].proc.poll() is not None:
                    workers.append(WorkerProcess(env, f"w{len(workers)}", _cpu_limit(12)))
                time.sleep(0.2)
        finally:
            for w in workers:
                w.stop()
        failed = service.job(poison["id"])
        flowed = [service.job(j) for j in others]
    assert failed["state"] == "failed"
    assert failed["error"]["code"] == "worker_lost"
    assert "after 2 attempt(s)" in failed["error"]["message"]
    assert [j["state"] for j in flowed] == ["succeeded"] * 3
    deaths = [w.proc.returncode for w in workers[:-1]]
    assert len(deaths) >= 2 and all(code == -signal.SIGXCPU for code in deaths), deaths


# ------------------------------------------------------------------------------ full volume
def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _fill(volume: Path) -> Path:
    """Write a filler file until the volume refuses a byte more."""
    filler = volume / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                fh.write(block)
        with contextlib.suppress(OSError):
            while True:
                fh.write(b"\0")
    return filler


@contextlib.contextmanager
def storage_volume(tmp: Path) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A small tmpfs for storage where mounting is allowed (root), else a plain folder and a
    file-size limit for the gateway and worker processes. Yields (storage, preexec_fn)."""
    mount = tmp / "volume"
    if _mount_tmpfs(mount, "8m"):
        try:
            yield mount / "storage", None
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        return

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    yield tmp / "storage", limit


@contextlib.contextmanager
def serve_process(env: dict[str, str], preexec: Callable[[], None] | None) -> Iterator[str]:
    port = _free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
    full.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "midiffusion.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=preexec,  # a resource limit, set between fork and exec
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, base)
        yield base
    finally:
        stop_process(proc)


def test_a_full_volume_refuses_uploads_and_fails_jobs_cleanly(
    redis_url: str, tmp_path: Path, tiny_model_store
) -> None:
    url = redis_db(redis_url, 13)
    redis.Redis.from_url(url).flushdb()
    rng = np.random.default_rng(0)
    big = write_nifti(tmp_path / "big.nii", data=rng.random((128, 128, 128), np.float32))
    small = write_nifti(tmp_path / "small.nii.gz", (32, 32, 2))
    with storage_volume(tmp_path) as (storage, limit):
        storage.mkdir(parents=True, exist_ok=True)
        env = {
            "MIDIFF_REDIS_URL": url,
            "MIDIFF_STORAGE_DIR": str(storage),
            "MIDIFF_MODEL_DIR": str(tiny_model_store.root),
            "MIDIFF_API_KEYS": API_KEY,
        }
        with (
            serve_process(env, limit) as base,
            httpx.Client(base_url=base, headers=AUTH, timeout=60) as client,
        ):

            def submit(path: Path) -> httpx.Response:
                with open(path, "rb") as fh:
                    return client.post(
                        "/translate", files={"file": (path.name, fh)}, data={"steps": "2"}
                    )

            refused = submit(big)  # 8 MiB: more than the volume (or the file-size limit) holds
            assert refused.status_code == 507, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "insufficient-storage"
            assert list(iter_partials(storage)) == []

            queued = submit(small)  # it fits; then nothing more does
            assert queued.status_code == 202, queued.text
            job_id = queued.json()["id"]
            filler = _fill(storage.parent) if limit is None else None
            worker = WorkerProcess(
                worker_env(url, storage, tiny_model_store.root, MIDIFF_STORE_OUTAGE_S="5"),
                "full",
                _output_limit() if limit is not None else None,
            )
            try:
                job = wait_for(
                    lambda: (j := client.get(f"/jobs/{job_id}").json())["state"] in FINAL and j,
                    timeout=300,
                    what="the job on a full volume",
                )
            finally:
                worker.stop()
            assert job["state"] == "failed"
            assert job["error"]["code"] == "storage_full", job["error"]
            assert "storage is full" in job["error"]["message"]
            assert (storage / "in" / f"{job_id}.nii.gz").is_file()  # the input is kept
            assert list((storage / "out").iterdir()) == []  # no half-written output
            assert list(iter_partials(storage)) == []
            if filler is not None:
                filler.unlink()
            assert httpx.get(f"{base}/health/ready").status_code == 200  # still serving


def _output_limit() -> Callable[[], None]:
    """The worker may read anything but write no file over 1 KiB: its output cannot fit."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    return apply
