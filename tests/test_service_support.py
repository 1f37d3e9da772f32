"""Helpers shared by the service and worker tests (this module holds no tests).

Real pieces only: NIfTI files written with nibabel, the gateway built by ``create_app`` against
the real Redis of the ``redis_url`` fixture, and Celery workers started as real processes with
``celery -A worker.app worker -P solo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydantic import SecretStr

from service.settings import GatewaySettings

REPO = Path(__file__).resolve().parents[1]
API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"
AUTH = {"X-API-Key": API_KEY}


def phantom(shape: tuple[int, ...]) -> np.ndarray:
    """A disc of 'tissue' with a brighter core on zero background, repeated along slices."""
    h, w = shape[0], shape[1]
    yy, xx = np.mgrid[:h, :w]
    d2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    plane = (d2 < (0.35 * min(h, w)) ** 2) * 100.0 + (d2 < (0.15 * min(h, w)) ** 2) * 60.0
    if len(shape) == 2:
        return plane.astype(np.float32)
    return np.repeat(plane[:, :, None], shape[2], axis=2).astype(np.float32)


def sample_affine() -> np.ndarray:
    affine = np.diag([1.25, 1.1, 3.0, 1.0])
    affine[:3, 3] = [-20.0, 14.0, 31.5]
    return affine


def write_nifti(path: Path, shape: tuple[int, ...] = (32, 32, 3), **kwargs: Any) -> Path:
    data = kwargs.pop("data", None)
    data = phantom(shape) if data is None else data
    nib.save(nib.Nifti1Image(data, kwargs.pop("affine", sample_affine())), path)
    return path


def with_sform(data: np.ndarray, sform: np.ndarray, path: Path) -> nib.Nifti1Image:
    """A NIfTI file whose header's sform is ``sform`` as written, however broken (nibabel
    refuses to build such an image in memory, but a scanner's converter can write one)."""
    header = nib.Nifti1Header()
    for row, name in enumerate(("srow_x", "srow_y", "srow_z")):
        header[name] = sform[row]
    header["sform_code"], header["qform_code"] = 2, 0
    nib.save(nib.Nifti1Image(data, None, header), path)  # no affine: the header's is kept
    return nib.load(path)


def gateway_settings(
    storage_dir: Path, model_dir: Path, redis_url: str | None, **overrides: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "storage_dir": storage_dir,
        "model_dir": model_dir,
        "api_keys": SecretStr(f"{API_KEY},{OTHER_KEY}"),
        "cleanup_interval_s": 0,
        "retry_after_s": 1,
    }
    values.update(overrides)
    return GatewaySettings(**values)


def wait_for(
    check: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll ``check`` until it returns something truthy (no wall-clock assertion: a deadline
    only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(interval)


def wait_until_ready(
    proc: subprocess.Popen, base: str, log: Path | None = None, what: str = "the gateway"
) -> None:
    """Wait for a gateway process at ``base`` to answer ``/health/ready``; fail at once, with
    its ``log``, if the process exits first."""
    import httpx

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited" + (":\n" + log.read_text() if log else ""))
        try:
            return httpx.get(f"{base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout=90, interval=0.2, what=f"{what} to be ready")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Stop a service process as its supervisor would: ``sig`` (SIGINT: uvicorn's Ctrl-C), 30 s
    to finish, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class WorkerProcess:
    """A real ``celery -A worker.app worker -P solo`` process, logs collected for assertions."""

    def __init__(
        self, env: dict[str, str], name: str, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MIDIFF_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(REPO)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
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
                "info",
                "-n",
                f"{name}@%h",
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=preexec_fn,  # a resource limit, set between fork and exec
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(
            lambda: any("ready." in line for line in self.lines) or self.proc.poll() is not None,
            timeout=90,
            what="the worker to start",
        )
        if self.proc.poll() is not None:
            raise RuntimeError("worker did not start:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task, as in an out-of-memory kill."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)


def worker_env(redis_url: str, storage_dir: Path, model_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        "MIDIFF_REDIS_URL": redis_url,
        "MIDIFF_STORAGE_DIR": str(storage_dir),
        "MIDIFF_MODEL_DIR": str(model_dir),
        "MIDIFF_DEVICE": "cpu",
        "MIDIFF_WORKER_METRICS_PORT": "0",
    }
    env.update(extra)
    return env


def redis_db(url: str, db: int) -> str:
    """The same server, another database: test groups never see each other's queues."""
    return url.rsplit("/", 1)[0] + f"/{db}"


def iter_partials(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if ".part-" in p.name)
