"""A DICOM upload's archive: a zip read in memory, or a folder, into the bytes of each file.

Caps hold on the entry count and on each entry's and the total expanded size (declared sizes
first, then the bytes really read: a zip can lie about them). No path from an archive ever
touches the filesystem, and refusals name entries by their place, never by their name.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from jobs.dicom_intake import ACCEPTED, DicomRejected

ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class Limits:
    max_entries: int = 4096
    max_entry_bytes: int = 256 * 1024 * 1024
    max_total_bytes: int = 2 * 1024 * 1024 * 1024


DEFAULT_LIMITS = Limits()


def is_zip(head: bytes) -> bool:
    return head[:4] == ZIP_MAGIC


def _capped_read(fh: BinaryIO, cap: int, what: str) -> bytes:
    data = fh.read(cap + 1)
    if len(data) > cap:
        raise DicomRejected(f"{what} expands to more than {cap // (1024 * 1024)} MiB")
    return data


def zip_entries(
    source: Path | bytes | BinaryIO, limits: Limits = DEFAULT_LIMITS
) -> Iterator[bytes]:
    """The bytes of each file in a zip, in memory, within ``limits`` (declared sizes are checked
    first, and the real expanded bytes as they are read: a zip can lie about them)."""
    handle: Any = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DicomRejected(
            f"the zip archive cannot be read (damaged or not a zip); accepted: {ACCEPTED}"
        ) from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) > limits.max_entries:
            raise DicomRejected(
                f"the zip holds {len(infos)} files; at most {limits.max_entries} are accepted"
            )
        if sum(i.file_size for i in infos) > limits.max_total_bytes:
            raise DicomRejected(
                f"the zip expands to more than {limits.max_total_bytes // (1024 * 1024)} MiB"
            )
        total = 0
        for n, info in enumerate(infos, 1):
            what = f"zip entry {n}"
            if info.flag_bits & 0x1:
                raise DicomRejected(f"{what} is encrypted; send an unencrypted zip")
            if info.file_size > limits.max_entry_bytes:
                raise DicomRejected(
                    f"{what} expands to more than {limits.max_entry_bytes // (1024 * 1024)} MiB"
                )
            try:
                with archive.open(info) as fh:
                    data = _capped_read(fh, limits.max_entry_bytes, what)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
                raise DicomRejected(
                    f"{what} cannot be decompressed (damaged or unsupported)"
                ) from exc
            total += len(data)
            if total > limits.max_total_bytes:
                raise DicomRejected(
                    f"the zip expands to more than {limits.max_total_bytes // (1024 * 1024)} MiB"
                )
            yield data


def folder_entries(folder: Path, limits: Limits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """Every file under ``folder`` (a series exported to disk), within ``limits``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    if len(files) > limits.max_entries:
        raise DicomRejected(f"the folder holds {len(files)} files; at most {limits.max_entries}")
    for path in files:
        if path.stat().st_size > limits.max_entry_bytes:
            raise DicomRejected(f"{path.name} is larger than {limits.max_entry_bytes} bytes")
        yield path.read_bytes()
