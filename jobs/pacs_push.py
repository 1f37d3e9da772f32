"""Sending a derived series to a PACS: by STOW-RS (DICOMweb) or by C-STORE (DIMSE), with a
bounded number of attempts and a growing pause between them, never in a loop.

The worker pushes a finished DICOM job when ``MIDIFF_PACS_STOW_URL`` or ``MIDIFF_PACS_AE`` is set
(``worker.runtime``); the C-STORE listener sends its results back with the same code. Errors
carry the kind of failure and the destination's status, never data from the instances.
"""

from __future__ import annotations

import base64
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

STOW_TIMEOUT_S = 60


class PushError(RuntimeError):
    """One attempt failed; the message says how (no patient data)."""


@dataclass(frozen=True)
class StowTarget:
    url: str  # e.g. http://pacs:8042/dicom-web/studies
    auth: str | None = None  # "user:password" (Basic) or "Bearer <token>"

    def describe(self) -> str:
        return f"STOW-RS {self.url}"


@dataclass(frozen=True)
class StoreTarget:
    ae_title: str
    host: str
    port: int
    calling_ae: str = "MIDIFF"

    def describe(self) -> str:
        return f"C-STORE {self.ae_title}@{self.host}:{self.port}"


Target = StowTarget | StoreTarget


def stow(target: StowTarget, instances: Sequence[bytes]) -> None:
    boundary = f"midiff-{secrets.token_hex(12)}"
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + blob + b"\r\n"
            for blob in instances
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    if target.auth:
        if target.auth.lower().startswith("bearer "):
            headers["Authorization"] = target.auth
        else:
            headers["Authorization"] = "Basic " + base64.b64encode(target.auth.encode()).decode()
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=STOW_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise PushError(f"{target.describe()} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PushError(
            f"{target.describe()} could not be reached ({type(reason).__name__})"
        ) from exc
    if status != 200:  # 202: some instances failed; anything else: not all stored
        raise PushError(f"{target.describe()} stored only part of the series (HTTP {status})")


def c_store(target: StoreTarget, instances: Sequence[bytes]) -> None:
    import io

    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in instances]
    ae = AE(ae_title=target.calling_ae)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class)
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise PushError(f"{target.describe()}: the association was refused or not answered")
    try:
        for n, ds in enumerate(datasets, 1):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB006, 0xB007):
                shown = "no answer" if code is None else f"status 0x{int(code):04X}"
                raise PushError(f"{target.describe()}: instance {n} was not stored ({shown})")
    finally:
        assoc.release()


def send(target: Target, instances: Sequence[bytes]) -> None:
    if isinstance(target, StowTarget):
        stow(target, instances)
    else:
        c_store(target, instances)


def push_with_retry(
    target: Target,
    instances: Sequence[bytes],
    *,
    attempts: int,
    backoff_s: float,
    on_attempt: Callable[[int, str | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Send, up to ``attempts`` times, pausing ``backoff_s``, then twice that, ... between them.
    Returns None when sent, else the last attempt's error. ``on_attempt(n, error)`` is told of
    each attempt's outcome (None: sent)."""
    error: str | None = None
    for n in range(1, attempts + 1):
        try:
            send(target, instances)
            error = None
        except PushError as exc:
            error = str(exc)
        except Exception as exc:  # a broken peer can fail in many ways; the kind is enough
            error = f"{target.describe()}: {type(exc).__name__}"
        if on_attempt is not None:
            on_attempt(n, error)
        if error is None:
            return None
        if n < attempts:
            sleep(backoff_s * 2 ** (n - 1))
    return error
