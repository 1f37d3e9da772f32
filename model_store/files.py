"""File primitives shared by the model registry and the science: the sha256 of a file, and the
one atomic write (a temporary file in the target's folder, ``os.replace``-d over the target when
complete, removed on failure), so that no reader ever sees half a file.

They live here because ``model_store`` is the leaf every other part may import (it imports
nothing of ours): the registry writes aliases with them and checks weights, the science
(``midiffusion``) writes images, data sets, checkpoints, weights and reports. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READABLE = 0o644  # mkstemp makes 0600 files; what the project writes is meant to be read


@contextmanager
def atomic_path(path: Path | str, *, mode: int = READABLE) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` for a writer to fill. It keeps ``path``'s suffix
    (``.nii.gz`` whole), so writers that choose the format by name (nibabel, Pillow,
    matplotlib) write the right one. It replaces ``path`` when the block finishes and is
    removed when the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, mode)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path | str, payload: bytes, *, mode: int = READABLE) -> Path:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_text_atomic(path: Path | str, text: str, *, mode: int = READABLE) -> Path:
    with atomic_path(path, mode=mode) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
