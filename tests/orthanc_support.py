"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the PACS tests: started on
free loopback ports with a generated configuration, reached over its REST API (this module holds
no tests; the session fixture is ``orthanc`` in ``conftest.py``)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

DICOMWEB_PLUGINS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    url: str
    dicom_port: int
    log: Path
    aet: str = AET

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def store(self, blobs: list[bytes]) -> list[str]:
        """Upload instances over REST; their Orthanc ids."""
        with self.client() as c:
            ids = []
            for blob in blobs:
                r = c.post("/instances", content=blob)
                r.raise_for_status()
                ids.append(r.json()["ID"])
            return ids

    def series_in_study(self, study_uid: str) -> list[dict]:
        with self.client() as c:
            r = c.post(
                "/tools/find",
                json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
            )
            r.raise_for_status()
            return r.json()

    def instance_file(self, orthanc_id: str) -> bytes:
        with self.client() as c:
            r = c.get(f"/instances/{orthanc_id}/file")
            r.raise_for_status()
            return r.content

    def tags(self, orthanc_id: str) -> dict:
        with self.client() as c:
            r = c.get(f"/instances/{orthanc_id}/simplified-tags")
            r.raise_for_status()
            return r.json()


def _plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGINS if p.is_file()), None)


def missing() -> str | None:
    if shutil.which("Orthanc") is None or _plugin() is None:
        return (
            "Orthanc with its DICOMweb plugin is not installed "
            "(apt-get install orthanc orthanc-dicomweb; .ci/run does this)"
        )
    return None


@contextmanager
def running_orthanc(workdir: Path) -> Iterator[Orthanc]:
    http_port, dicom_port = free_port(), free_port()
    storage = workdir / "db"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "midiffusion-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "SaveJobs": False,
        "Plugins": [str(_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {},
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [shutil.which("Orthanc") or "Orthanc", str(config_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("Orthanc exited:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(f"{url}/system", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("Orthanc did not answer within 60 s:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
    try:
        yield Orthanc(url, dicom_port, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
