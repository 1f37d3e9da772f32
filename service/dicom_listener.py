"""``midiffusion dicom-listen``: a C-STORE SCP (pynetdicom) in front of the gateway.

A PACS or modality sends a series to our AE title. Instances are grouped by SeriesInstanceUID in
memory; once a series has been quiet for ``MIDIFF_DICOM_STABLE_SECONDS`` it is submitted to the
gateway's ``POST /translate`` as one `file` part per instance, so it is checked, recorded and
queued by exactly the gateway's submission path. When the job succeeds, the derived series is
downloaded and sent by C-STORE to ``MIDIFF_DICOM_DEST`` (``AET@host:port``), or back to the
caller's own SCP (``MIDIFF_DICOM_PEERS``: ``AET=host:port,...``). Logs name jobs and counts,
never patient data.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.dicom_intake import DicomRejected, read_header
from jobs.pacs_push import StoreTarget, push_with_retry
from model_store.card import INPUT_KINDS, known_input_kind

log = logging.getLogger("midiffusion.dicom_listener")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


class ListenerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIDIFF_", extra="ignore")

    dicom_ae_title: str = Field(default="MIDIFF", max_length=16, description="our AE title")
    dicom_host: str = Field(default="0.0.0.0", description="address to listen on")
    dicom_port: int = Field(default=11112, ge=1, le=65535, description="DICOM port")
    dicom_accepted_aes: str = Field(
        default="", description="comma-separated calling AE titles accepted; empty = any"
    )
    dicom_stable_seconds: float = Field(
        default=5.0, gt=0, description="a series is submitted after this long without instances"
    )
    dicom_max_pending_mb: int = Field(
        default=2048, ge=1, description="instances held while series arrive, in MiB"
    )
    dicom_dest: str = Field(
        default="", description="where results go, AET@host:port; empty = back to the caller"
    )
    dicom_peers: str = Field(
        default="", description="callers' own SCPs, AET=host:port,... (for results sent back)"
    )
    dicom_model: str | None = Field(default=None, description="model for the jobs (name[:ver])")
    dicom_preset: str | None = Field(default=None, description="sampling preset (e.g. fast)")
    dicom_steps: int | None = Field(default=None, ge=1, description="sampling steps")
    dicom_anatomy: str | None = Field(
        default=None,
        description=f"what the series show: {' or '.join(INPUT_KINDS)}; unset: judged by size",
    )
    gateway_url: str = Field(default="http://127.0.0.1:8000", description="the gateway")
    gateway_api_key: SecretStr = Field(default=SecretStr(""), description="its API key")
    push_attempts: int = Field(default=4, ge=1, le=10)
    push_backoff_s: float = Field(default=2.0, ge=0)
    job_timeout_s: int = Field(default=3600, ge=1)

    @field_validator("dicom_anatomy")
    @classmethod
    def _known_anatomy(cls, value: str | None) -> str | None:
        return known_input_kind(value)

    def accepted(self) -> list[str]:
        return [a.strip() for a in self.dicom_accepted_aes.split(",") if a.strip()]


def parse_address(text: str) -> tuple[str, str, int]:
    """``AET@host:port`` -> (AET, host, port)."""
    ae, _, where = text.partition("@")
    host, _, port = where.rpartition(":")
    if not ae or not host or not port.isdigit():
        raise ValueError(f"not AET@host:port: {text!r}")
    return ae.strip(), host.strip(), int(port)


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    peers = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        ae, _, where = item.partition("=")
        _, host, port = parse_address(f"{ae}@{where}")
        peers[ae.strip()] = (host, port)
    return peers


@dataclass
class _Pending:
    caller: str
    instances: list[bytes] = field(default_factory=list)
    last: float = 0.0


class Gateway:
    """The few gateway calls the listener makes (stdlib HTTP: no extra dependency)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers={**self.headers, **headers}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.read()

    def submit(self, instances: list[bytes], fields: dict[str, str]) -> str:
        boundary = f"midiff-{secrets.token_hex(12)}"
        chunks = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        ]
        for n, blob in enumerate(instances, 1):
            chunks.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{n:05d}.dcm"\r\nContent-Type: application/dicom\r\n\r\n'.encode()
            )
            chunks.append(blob + b"\r\n")
        chunks.append(f"--{boundary}--\r\n".encode())
        answer = self._call(
            "POST",
            "/translate",
            b"".join(chunks),
            **{"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        return json.loads(answer)["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return json.loads(self._call("GET", f"/jobs/{job_id}"))

    def result(self, job_id: str) -> list[bytes]:
        data = self._call("GET", f"/jobs/{job_id}/result")
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [archive.read(info) for info in archive.infolist()]


class Listener:
    def __init__(self, settings: ListenerSettings, gateway: Gateway | None = None) -> None:
        self.settings = settings
        self.gateway = gateway or Gateway(
            settings.gateway_url, settings.gateway_api_key.get_secret_value()
        )
        self.peers = parse_peers(settings.dicom_peers)
        self.dest = parse_address(settings.dicom_dest) if settings.dicom_dest else None
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._held = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="midiff-series")
        self._server: Any = None
        self.outcomes: dict[str, str] = {}  # job id -> what happened (for tests and logs)

    def pending_counts(self) -> dict[str, int]:
        """Instances held per series, not yet quiet for long enough."""
        with self._lock:
            return {uid: len(p.instances) for uid, p in self._pending.items()}

    # -- C-STORE
    def _on_store(self, event: Any) -> int:
        try:
            blob = event.encoded_dataset()
            inst = read_header(blob, 1)
        except (DicomRejected, ValueError, AttributeError):
            return CANNOT_UNDERSTAND
        if inst is None:
            return CANNOT_UNDERSTAND
        series = str(inst.header.get("SeriesInstanceUID", ""))
        limit = self.settings.dicom_max_pending_mb * 1024 * 1024
        with self._lock:
            if self._held + len(blob) > limit:
                log.warning("holding %d bytes already; refusing an instance", self._held)
                return OUT_OF_RESOURCES
            pending = self._pending.setdefault(
                series, _Pending(caller=str(event.assoc.requestor.ae_title).strip())
            )
            pending.instances.append(blob)
            pending.last = time.monotonic()
            self._held += len(blob)
        return SUCCESS

    def _flush_quiet(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            ready = []
            with self._lock:
                for uid, pending in list(self._pending.items()):
                    if now - pending.last >= self.settings.dicom_stable_seconds:
                        ready.append(self._pending.pop(uid))
                        self._held -= sum(len(b) for b in pending.instances)
            for pending in ready:
                self._pool.submit(self._process, pending)

    # -- one series: submit, wait, send the result on
    def _process(self, pending: _Pending) -> None:
        try:
            self._run(pending)
        except Exception:  # one series' trouble must not stop the others
            log.exception("a series of %d instances could not be processed", len(pending.instances))

    def _submit(self, pending: _Pending) -> str | None:
        """Submit through ``POST /translate``: a refusal (4xx) is final; an unreachable or
        unready gateway (5xx) is tried again, a bounded number of times."""
        fields = {}
        if self.settings.dicom_model:
            fields["model"] = self.settings.dicom_model
        if self.settings.dicom_preset:
            fields["preset"] = self.settings.dicom_preset
        if self.settings.dicom_steps:
            fields["steps"] = str(self.settings.dicom_steps)
        if self.settings.dicom_anatomy:
            fields["anatomy"] = self.settings.dicom_anatomy
        for attempt in range(1, self.settings.push_attempts + 1):
            try:
                return self.gateway.submit(pending.instances, fields)
            except urllib.error.HTTPError as exc:
                code = "?"
                with contextlib.suppress(ValueError):
                    code = json.loads(exc.read()).get("code", "?")
                if exc.code < 500:
                    log.warning(
                        "a series of %d instances was refused: HTTP %d (%s)",
                        len(pending.instances),
                        exc.code,
                        code,
                    )
                    return None
                reason = f"HTTP {exc.code} ({code})"
            except (urllib.error.URLError, OSError) as exc:
                reason = f"unreachable ({type(exc).__name__})"
            log.warning("submitting a series, attempt %d: the gateway is %s", attempt, reason)
            if attempt < self.settings.push_attempts:
                self._stop.wait(self.settings.push_backoff_s * 2 ** (attempt - 1))
        log.error(
            "a series of %d instances was not submitted: gateway unavailable",
            len(pending.instances),
        )
        return None

    def _run(self, pending: _Pending) -> None:
        job_id = self._submit(pending)
        if job_id is None:
            return
        log.info("job %s: submitted a series of %d instances", job_id, len(pending.instances))
        self.outcomes[job_id] = "submitted"
        deadline = time.monotonic() + self.settings.job_timeout_s + 60
        job: dict[str, Any] = {}
        while time.monotonic() < deadline and not self._stop.is_set():
            job = self.gateway.job(job_id)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(1.0)
        if job.get("state") != "succeeded":
            self.outcomes[job_id] = f"job {job.get('state', 'unfinished')}"
            log.warning("job %s ended %s; nothing to send", job_id, job.get("state"))
            return
        target = self._target(pending.caller)
        if target is None:
            self.outcomes[job_id] = "no destination"
            log.warning(
                "job %s: no destination for caller AE (set MIDIFF_DICOM_DEST or PEERS)", job_id
            )
            return
        error = push_with_retry(
            target,
            self.gateway.result(job_id),
            attempts=self.settings.push_attempts,
            backoff_s=self.settings.push_backoff_s,
        )
        self.outcomes[job_id] = f"failed: {error}" if error else "sent"
        log.info(
            "job %s: result %s to %s", job_id, "not sent" if error else "sent", target.describe()
        )

    def _target(self, caller: str) -> StoreTarget | None:
        ae = self.settings.dicom_ae_title
        if self.dest is not None:
            return StoreTarget(self.dest[0], self.dest[1], self.dest[2], ae)
        if caller in self.peers:
            host, port = self.peers[caller]
            return StoreTarget(caller, host, port, ae)
        return None

    # -- lifecycle
    def start(self) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        accepted = self.settings.accepted()
        if accepted:
            ae.require_calling_aet = accepted
        threading.Thread(target=self._flush_quiet, name="midiff-quiet", daemon=True).start()
        self._server = ae.start_server(
            (self.settings.dicom_host, self.settings.dicom_port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        log.info(
            "listening as %s on %s:%d (%s)",
            self.settings.dicom_ae_title,
            self.settings.dicom_host,
            self.settings.dicom_port,
            "calling AEs: " + ", ".join(accepted) if accepted else "any calling AE",
        )

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
