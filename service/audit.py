"""The audit log: one JSON line per submission, result download and deletion.

Each line says who (a short hash of the API key, never the key), which job, when, what was asked
and how it ended. It holds no patient data: no file names, no header fields, no image content.
Lines go to the logger ``midiffusion.audit``, and to ``MIDIFF_AUDIT_LOG`` when that is set.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from logging.handlers import WatchedFileHandler
from pathlib import Path

log = logging.getLogger("midiffusion.audit")

SUBMIT = "submit"
DOWNLOAD = "download"
DELETE = "delete"


def open_audit_file(path: Path) -> None:
    """Also append the audit lines to ``path`` (reopened when logrotate moves it)."""
    path = Path(path)
    for handler in log.handlers:
        if isinstance(handler, WatchedFileHandler) and Path(handler.baseFilename) == path.resolve():
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = WatchedFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def audit(event: str, principal: str, job_id: str | None, outcome: str, status: int) -> None:
    """``outcome``: ``accepted``, ``replayed``, ``ok``, ``cancelled``... or the problem code."""
    line = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": event,
        "key": principal,
        "job": job_id,
        "outcome": outcome,
        "status": status,
    }
    log.info(json.dumps(line, separators=(",", ":")))
