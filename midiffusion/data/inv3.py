"""Reading an InVesalius project (``.inv3``): a tar.gz holding ``main.plist`` + raw ``matrix.dat``.

Only the image matrix is read: its dtype, shape (z, y, x) and spacing come from ``main.plist``
and the byte count is checked against them. Values are Hounsfield units for CT.
"""

from __future__ import annotations

import plistlib
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from midiffusion.data.errors import DataError


@dataclass(frozen=True)
class Inv3Volume:
    data: np.ndarray  # (z, y, x) as stored
    spacing_xyz: tuple[float, float, float]  # mm
    modality: str


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    for info in tar.getmembers():
        if info.isfile() and PurePosixPath(info.name).name == name:
            f = tar.extractfile(info)
            if f is not None:
                return f.read()
    raise KeyError(name)


def read_inv3(path: Path, source: str) -> Inv3Volume:
    """The image matrix of an ``.inv3`` project; a one-line DataError if it is damaged."""
    fix = f"delete {path.parent} and run `midiffusion data fetch --sources {source}`"
    try:
        with tarfile.open(path, "r:gz") as tar:
            plist = plistlib.loads(_member(tar, "main.plist"))
            matrix = plist["matrix"]
            raw = _member(tar, PurePosixPath(matrix["filename"]).name)
    except FileNotFoundError as err:
        raise DataError(f"source {source}: {path} is missing; {fix}") from err
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(
            f"source {source}: {path.name} is a corrupt archive ({err}); {fix}"
        ) from err
    except (KeyError, plistlib.InvalidFileException) as err:
        raise DataError(
            f"source {source}: {path.name} is not an InVesalius project (no {err}); {fix}"
        ) from err
    dtype = np.dtype(matrix["dtype"]).newbyteorder("<")
    shape = tuple(int(n) for n in matrix["shape"])
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise DataError(
            f"source {source}: {path.name} holds {len(raw)} bytes of image data, expected "
            f"{int(np.prod(shape)) * dtype.itemsize} for {shape} {dtype}; {fix}"
        )
    spacing = tuple(float(s) for s in plist["spacing"])
    return Inv3Volume(
        data=np.frombuffer(raw, dtype=dtype).reshape(shape),
        spacing_xyz=spacing,  # type: ignore[arg-type]
        modality=str(plist.get("modality", "")),
    )
