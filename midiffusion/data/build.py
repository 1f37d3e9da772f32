"""Build sets from the cached sources: deterministic, versioned, atomic.

A set is built into a hidden temporary sibling directory (``sets/.<name>-XXXX``) and renamed to
``sets/<name>`` only when every file, the contact sheet and ``manifest.json`` (written last) are
there. A crash leaves at most a hidden temporary directory, removed by the next build, never a
set that looks complete.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from midiffusion.data.contact import contact_sheet_png
from midiffusion.data.errors import DataError
from midiffusion.data.nifti import nifti_bytes
from midiffusion.data.recipe import RECIPE_VERSION, SET_NAMES, Recipe
from midiffusion.data.sources import sha256_file, source_by_name
from midiffusion.data.volumes import BuiltSet

MANIFEST = "manifest.json"
CONTACT_SHEET = "contact_sheet.png"

# set name -> module with ``build(root, recipe, log) -> BuiltSet``
BUILDERS: dict[str, str] = {
    "t1-train": "midiffusion.data.t1_train",
    "mni-synth": "midiffusion.data.mni_synth",
    "ct-real": "midiffusion.data.ct_real",
    "head-synth": "midiffusion.data.head_synth",
    "head-synth-256": "midiffusion.data.head_synth_256",
    "head-tune": "midiffusion.data.head_tune",
}

SLICE_CONVENTION = (
    "3D NIfTI (grid, grid, n_slices), RAS axis-aligned affine: slice k is vol[:, :, k], "
    "axis 0 = patient right, axis 1 = anterior; display with np.rot90(slice) for anterior up, "
    "patient right on the viewer's right. Images float32 in [0, 1], masks uint8."
)


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def _source_entry(name: str) -> dict[str, object]:
    src = source_by_name(name)
    return {
        "registry": src.registry,
        "package": src.package,
        "version": src.version,
        "licence": src.licence,
        "files": {
            role: {"path": rel, "sha256": src.sha256[role]} for role, rel in src.files.items()
        },
    }


def manifest_for(name: str, built: BuiltSet, recipe: Recipe, files: dict[str, str]) -> dict:
    images = [v for v in built.volumes if v.role == "image"]
    return {
        "set": name,
        "kind": built.kind,
        "recipe_version": RECIPE_VERSION,
        "recipe": recipe.as_dict(),
        "slice_convention": SLICE_CONVENTION,
        "sources": {s: _source_entry(s) for s in built.sources},
        "volumes": [
            {
                "key": v.key,
                "file": f"{v.key}.nii.gz",
                "role": v.role,
                "modality": v.modality,
                "source": v.source,
                "shape": list(v.data.shape),
                "dtype": str(v.data.dtype),
                "spacing_mm": [round(float(s), 6) for s in np.abs(np.diag(v.affine)[:3])],
                "sha256": files[f"{v.key}.nii.gz"],
            }
            for v in built.volumes
        ],
        "counts": {
            "volumes": len(images),
            "slices": int(sum(v.data.shape[2] for v in images)),
        },
        "contact_sheet": {"file": CONTACT_SHEET, "sha256": files[CONTACT_SHEET]},
        "notes": built.notes,
    }


def write_set(tmp: Path, name: str, built: BuiltSet, recipe: Recipe) -> None:
    files: dict[str, str] = {}
    descr = f"midiffusion {name} recipe v{RECIPE_VERSION}"
    for v in built.volumes:
        payload = nifti_bytes(v.data, v.affine, descr)
        (tmp / f"{v.key}.nii.gz").write_bytes(payload)
        files[f"{v.key}.nii.gz"] = _sha256(payload)
    rows = [(v.key, v.data.astype(np.float32)) for v in built.volumes if v.role == "image"]
    sheet = contact_sheet_png(rows)
    (tmp / CONTACT_SHEET).write_bytes(sheet)
    files[CONTACT_SHEET] = _sha256(sheet)
    manifest = manifest_for(name, built, recipe, files)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _up_to_date(final: Path, recipe: Recipe) -> bool:
    """The set is there, complete, built by this recipe, and its files match the manifest."""
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if (
        manifest.get("recipe_version") != RECIPE_VERSION
        or manifest.get("recipe") != recipe.as_dict()
    ):
        return False
    for src_name, entry in manifest.get("sources", {}).items():
        if entry != _source_entry(src_name):
            return False
    return all(
        (final / v["file"]).is_file() and sha256_file(final / v["file"]) == v["sha256"]
        for v in manifest.get("volumes", [])
    )


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp``; the old set is moved aside first, then removed."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-old-"))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old)


def _remove_stale(sets_root: Path, name: str) -> None:
    for stale in sets_root.glob(f".{name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def build_set(
    name: str,
    root: Path,
    recipe: Recipe | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Build one set into ``root/sets/<name>`` (skipped when already up to date)."""
    if name not in BUILDERS:
        raise DataError(f"unknown set {name!r}; the sets are: {', '.join(SET_NAMES)}")
    recipe = recipe or Recipe()
    sets_root = root / "sets"
    sets_root.mkdir(parents=True, exist_ok=True)
    final = sets_root / name
    if not force and _up_to_date(final, recipe):
        log(f"{name}: up to date ({final})")
        return final
    _remove_stale(sets_root, name)
    log(f"{name}: building (recipe v{RECIPE_VERSION}, grid {recipe.grid})")
    try:
        built = importlib.import_module(BUILDERS[name]).build(root, recipe, log)
    except ValueError as err:  # geometry/intensity checks on the sources' content
        raise DataError(
            f"set {name}: {err}; check the sources with `midiffusion data fetch`"
        ) from err
    tmp = Path(tempfile.mkdtemp(dir=sets_root, prefix=f".{name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the set is meant to be shared
    try:
        write_set(tmp, name, built, recipe)
        _swap_in(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    n = sum(v.data.shape[2] for v in built.volumes if v.role == "image")
    log(f"{name}: {n} image slices written to {final}")
    return final


def build(
    names: list[str] | tuple[str, ...],
    root: Path,
    recipe: Recipe | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> list[Path]:
    return [build_set(n, root, recipe, force, log) for n in names]
