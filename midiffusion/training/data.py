"""The training slices: every axial slice of the NIfTI volumes in a folder (a built set or not)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.pipeline.intensity import input_kind

MANIFEST = "manifest.json"


def load_training_slices(data_dir: Path, grid: int) -> tuple[np.ndarray, dict]:
    """All axial slices (N, G, G) in [0,1] of the NIfTI volumes in ``data_dir`` (masks skipped),
    plus a manifest: the files, their slice counts, each file's input kind (a whole head or a
    brain, judged as inference judges a volume) and the set's own manifest when it has one. A
    built set of another kind than ``training`` (an evaluation set) is refused; a plain folder of
    volumes without a manifest is accepted."""
    files = sorted(
        p
        for p in Path(data_dir).iterdir()
        # hidden files are temporaries of an atomic write (model_store.files), never volumes
        if p.name.endswith((".nii", ".nii.gz"))
        and "mask" not in p.name
        and not p.name.startswith(".")
    )
    manifest_path = Path(data_dir) / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    kind = manifest.get("kind")
    if kind not in (None, "training"):
        raise ValueError(
            f"{data_dir} is not a training set (its manifest.json says {kind!r}): training on it "
            "would leak it into the model; train on a training set such as t1-train"
        )
    if not files:
        raise ValueError(
            f"{data_dir}: no NIfTI volumes found (expected a built set, e.g. t1-train)"
        )
    slices, kinds = [], {}
    for f in files:
        image = nib.load(str(f))
        vol = np.asarray(image.dataobj, dtype=np.float32)
        if vol.ndim != 3 or vol.shape[:2] != (grid, grid):
            raise ValueError(f"{f}: shape {vol.shape}, expected ({grid}, {grid}, n) slices")
        slices.append(np.moveaxis(vol, 2, 0))
        dx, dy = image.header.get_zooms()[:2]
        kinds[f.name] = input_kind(slices[-1] > 0, float(dx * dy))
    data = np.clip(np.concatenate(slices), 0, 1)
    manifest = {
        "directory": str(data_dir),
        "files": [f.name for f in files],
        "per_file": {f.name: len(s) for f, s in zip(files, slices, strict=True)},
        "kind_per_file": kinds,
        "slices": len(data),
        "manifest": manifest,
    }
    return data, manifest
