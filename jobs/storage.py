"""Local filesystem storage for uploads and results, under server-generated keys.

A key is ``<kind>/<job id><suffix>``, made by the server, never from a client's file name, so a
client cannot choose or guess where its bytes land. Every object is written to a temporary name
in the same folder and renamed into place when complete: a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

# ``.uncertainty``: a result's companion map (out/<id>.uncertainty.nii.gz); ``.zip``: a DICOM
# series (its instances in, the derived series out)
_KEY = re.compile(r"^(in|out)/[0-9a-f]{32}((\.uncertainty)?(\.nii\.gz|\.nii|\.png)|\.zip)$")
_PARTIAL_MARK = ".part-"


class InvalidKeyError(ValueError):
    pass


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for kind in ("in", "out"):
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(kind: str, job_id: str, suffix: str) -> str:
        key = f"{kind}/{job_id}{suffix}"
        if not _KEY.match(key):
            raise InvalidKeyError(f"not a storage key: {key!r}")
        return key

    def path(self, key: str) -> Path:
        if not _KEY.match(key):  # keys come from our own records; refuse anything else
            raise InvalidKeyError(f"not a storage key: {key!r}")
        return self.root / key

    def partial_path(self, key: str) -> Path:
        """A fresh temporary name beside ``key`` (same folder, so the rename is atomic).

        It keeps the key's suffix (``<id>.part-<random>.nii.gz``), so writers that pick a
        format from the file name (nibabel, Pillow) can write to it directly.
        """
        final = self.path(key)
        job_id, dot, suffix = final.name.partition(".")
        return final.with_name(f"{job_id}{_PARTIAL_MARK}{secrets.token_hex(6)}{dot}{suffix}")

    def commit(self, partial: Path, key: str) -> None:
        os.replace(partial, self.path(key))

    @contextmanager
    def writing_to(self, key: str) -> Iterator[Path]:
        """A temporary path to write an object to; it appears under ``key`` only if the block
        finishes, and nothing is left behind if it does not."""
        partial = self.partial_path(key)
        try:
            yield partial
            self.commit(partial, key)
        finally:
            partial.unlink(missing_ok=True)  # gone already once committed

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write an object through a file handle (:meth:`writing_to`)."""
        with self.writing_to(key) as partial, open(partial, "wb") as fh:
            yield fh

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete(self, key: str) -> bool:
        try:
            self.path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def sweep_partials(self, older_than_s: float, now: float | None = None) -> int:
        """Remove temporary files left by a crashed upload or worker."""
        limit = (now if now is not None else time.time()) - older_than_s
        removed = 0
        for kind in ("in", "out"):
            for path in (self.root / kind).iterdir():
                if _PARTIAL_MARK in path.name and path.stat().st_mtime < limit:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed

    def keys(self) -> Iterator[str]:
        for kind in ("in", "out"):
            for path in (self.root / kind).iterdir():
                key = f"{kind}/{path.name}"
                if _KEY.match(key):
                    yield key
