"""Reading built sets: the API that training and evaluation call.

A set lives in ``<data dir>/sets/<name>/`` as NIfTI volumes plus ``manifest.json``. Volumes are
3D, shape (grid, grid, n_slices): axial slices on the model grid with an axis-aligned RAS affine.
Slice ``k`` is ``vol[:, :, k]``: axis 0 runs to the patient's right, axis 1 to anterior.
``training_slices`` returns slices in that same (H, W) = (right, anterior) order, untransposed;
to display one upright (anterior at the top, patient right on the viewer's right) use
``np.rot90(slice)`` or ``plt.imshow(slice.T, origin="lower")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

MANIFEST = "manifest.json"


def data_dir() -> Path:
    """``MIDIFF_DATA_DIR``, else ``~/.cache/midiffusion``."""
    env = os.environ.get("MIDIFF_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "midiffusion"


def set_dir(name: str, root: Path | None = None) -> Path:
    """The directory of a complete built set; FileNotFoundError saying how to build it."""
    base = Path(root) if root is not None else data_dir()
    path = base / "sets" / name
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(
            f"data set {name!r} is not built in {base}; run `midiffusion data build --sets {name}`"
            + (f" --data-dir {base}" if root is not None else "")
        )
    return path


def manifest(name: str, root: Path | None = None) -> dict:
    return json.loads((set_dir(name, root) / MANIFEST).read_text())


def load_volumes(name: str, root: Path | None = None) -> dict[str, nib.Nifti1Image]:
    """Every volume of a set by key, in manifest order (e.g. ``t1``, ``t2w``, ..., ``mask``)."""
    path = set_dir(name, root)
    entries = manifest(name, root)["volumes"]
    return {e["key"]: nib.load(path / e["file"]) for e in entries}


def training_slices(name: str = "t1-train", root: Path | None = None) -> np.ndarray:
    """All axial image slices of a training set, float32 (N, H, W) in [0, 1].

    Volumes are concatenated in manifest order, slices in increasing z (inferior to superior);
    the order is deterministic. Masks are not included. Evaluation sets are refused, so that
    evaluation data can never leak into training by a wrong name.
    """
    man = manifest(name, root)
    if man.get("kind") != "training":
        raise ValueError(f"set {name!r} is an {man.get('kind')} set, not a training set")
    path = set_dir(name, root)
    parts = []
    for e in man["volumes"]:
        if e["role"] != "image":
            continue
        vol = np.asarray(nib.load(path / e["file"]).dataobj, dtype=np.float32)
        parts.append(np.moveaxis(vol, 2, 0))
    return np.ascontiguousarray(np.concatenate(parts, axis=0))
