"""Model registry: ``<root>/<name>/<version>/{weights.safetensors, model.json, metrics.json}``.

A model directory is trusted only after the sha256 of its weights matches its card. Weights are
safetensors, never pickles. ``<root>/aliases.json`` names the serving default explicitly
(``{"default": "t1w:10"}``): publishing a version does not put it in service, promoting it does.
Versions from elsewhere come in through :meth:`ModelStore.import_model` (a model directory or a
.zip / .tar(.gz) archive of one), checked against their card's sha256 before they are visible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model_store.card import ModelCard
from model_store.files import sha256_file, write_text_atomic

SHIPPED_ROOT = Path(__file__).resolve().parent / "models"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.json"
METRICS_FILE = "metrics.json"
ALIASES_FILE = "aliases.json"
# what an imported model directory may hold besides its weights and card
IMPORTABLE = (CARD_FILE, WEIGHTS_FILE, METRICS_FILE, "MODEL_CARD.md", "loss.png")
MAX_IMPORT_BYTES = 4 << 30  # a weights file larger than this is not a model of this project
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ModelNotFoundError(LookupError):
    """No such model or version in the store."""


class ModelIntegrityError(RuntimeError):
    """A model directory is incomplete, or its weights do not match the card's sha256."""


@dataclass(frozen=True)
class VerifiedModel:
    card: ModelCard
    weights_path: Path
    directory: Path


class ModelStore:
    def __init__(self, root: Path | str | None = None) -> None:
        root = root or os.environ.get("MIDIFF_MODEL_DIR") or SHIPPED_ROOT
        self.root = Path(root)

    # --- reading ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(
            int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / CARD_FILE).is_file()
        )

    def list(self) -> list[ModelCard]:
        return [self.card(n, v) for n in self.names() for v in self.versions(n)]

    def aliases(self) -> dict[str, str]:
        path = self.root / ALIASES_FILE
        return json.loads(path.read_text()) if path.is_file() else {}

    def default_ref(self) -> tuple[str, int | None]:
        """The serving default (name, version): the store's ``default`` alias, else the only
        model's (or t1w's) latest version."""
        alias = self.aliases().get("default")
        if alias:
            name, _, version = alias.partition(":")
            return name, int(version) if version else None
        names = [n for n in self.names() if self.versions(n)]
        if not names:
            raise ModelNotFoundError(f"the model store at {self.root} holds no models")
        return ("t1w" if "t1w" in names else names[0]), None

    def default_name(self) -> str:
        return self.default_ref()[0]

    def set_default(self, name: str, version: int) -> None:
        """Point the ``default`` alias at ``name`` v``version`` (which must verify)."""
        self.verified(name, version)
        aliases = {**self.aliases(), "default": f"{name}:{version}"}
        write_text_atomic(self.root / ALIASES_FILE, json.dumps(aliases, indent=2) + "\n")

    def directory(self, name: str, version: int | None = None) -> Path:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; models in the store: {known}")
        if version is None:
            default_name, default_version = self.default_ref()
            serving = default_version if default_name == name else None
            version = serving if serving in versions else versions[-1]
        if version not in versions:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version}; versions: "
                + ", ".join(map(str, versions))
            )
        return self.root / name / str(version)

    def card(self, name: str, version: int | None = None) -> ModelCard:
        path = self.directory(name, version) / CARD_FILE
        try:
            card = ModelCard.model_validate_json(path.read_text())
        except (ValidationError, ValueError) as exc:
            raise ModelIntegrityError(f"invalid model card {path}: {exc}") from exc
        if (card.name, str(card.version)) != (path.parent.parent.name, path.parent.name):
            raise ModelIntegrityError(
                f"card {path} says {card.name} v{card.version}, but lives in another directory"
            )
        return card

    def metrics(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        path = self.directory(name, version) / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def verified(self, name: str, version: int | None = None) -> VerifiedModel:
        """The card and weights path, after checking the weights' sha256 against the card."""
        card = self.card(name, version)
        directory = self.directory(name, card.version)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelIntegrityError(f"{card.name} v{card.version}: {weights} is missing")
        actual = sha256_file(weights)
        if actual != card.sha256:
            raise ModelIntegrityError(
                f"{card.name} v{card.version}: weights sha256 {actual[:12]}... does not match "
                f"the card's {card.sha256[:12]}...; the file is corrupt or was replaced. "
                "Restore it or publish a new version."
            )
        return VerifiedModel(card=card, weights_path=weights, directory=directory)

    # --- writing ---------------------------------------------------------------------------
    def publish(
        self,
        card: dict[str, Any],
        weights: Path,
        *,
        metrics: dict[str, Any] | None = None,
        extra_files: dict[str, Path] | None = None,
    ) -> ModelCard:
        """Store ``weights`` as a new version of ``card['name']`` (version = latest + 1).

        The directory is assembled under a temporary name and renamed into place, so a reader
        never sees a half-written model.
        """
        name = card["name"]
        if not _NAME.match(name):
            raise ValueError(f"model name {name!r}: use lowercase letters, digits, '-' and '_'")
        version = (self.versions(name) or [0])[-1] + 1
        full = {**card, "version": version, "sha256": sha256_file(Path(weights))}
        validated = ModelCard.model_validate(full)
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=parent))
        try:
            shutil.copyfile(weights, tmp / WEIGHTS_FILE)
            (tmp / CARD_FILE).write_text(validated.model_dump_json(indent=2) + "\n")
            if metrics is not None:
                (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
            for fname, src in (extra_files or {}).items():
                shutil.copyfile(src, tmp / fname)
            tmp.chmod(0o755)
            tmp.rename(parent / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return validated

    def import_model(self, source: Path) -> ModelCard:
        """Install a model directory, or a .zip / .tar / .tar.gz archive of one, as the version
        its card names, after checking the weights against the card's sha256.

        Archive members are read in memory by their base names (only ``IMPORTABLE`` ones, plain
        files, at most ``MAX_IMPORT_BYTES`` each): no path from an archive touches the disk.
        """
        files = _read_model_files(Path(source))
        missing = [f for f in (CARD_FILE, WEIGHTS_FILE) if f not in files]
        if missing:
            raise ValueError(f"{source}: no {' or '.join(missing)} in it; a model holds both")
        try:
            card = ModelCard.model_validate_json(files[CARD_FILE])
        except ValidationError as exc:
            raise ModelIntegrityError(f"{source}: invalid model card: {exc}") from exc
        digest = hashlib.sha256(files[WEIGHTS_FILE]).hexdigest()
        if digest != card.sha256:
            raise ModelIntegrityError(
                f"{source}: weights sha256 {digest[:12]}... does not match the card's "
                f"{card.sha256[:12]}...; nothing was installed"
            )
        if not _NAME.match(card.name):
            raise ValueError(f"model name {card.name!r}: use lowercase letters, digits, - and _")
        target = self.root / card.name / str(card.version)
        if target.exists():
            raise ValueError(f"{card.name} v{card.version} is already in the store at {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{card.version}-import-", dir=target.parent))
        try:
            for name, payload in files.items():
                (tmp / name).write_bytes(payload)
            tmp.chmod(0o755)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return card


def _read_model_files(source: Path) -> dict[str, bytes]:
    """The importable files of a model directory or archive, by base name, in memory."""
    import tarfile
    import zipfile

    def take(name: str, size: int) -> bool:
        if Path(name).name not in IMPORTABLE:
            return False
        if size > MAX_IMPORT_BYTES:
            raise ValueError(f"{source}: {Path(name).name} is {size} bytes, over the import cap")
        return True

    if source.is_dir():
        return {
            p.name: p.read_bytes()
            for p in source.iterdir()
            if p.is_file() and not p.is_symlink() and take(p.name, p.stat().st_size)
        }
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such model directory or archive")
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            return {
                Path(i.filename).name: zf.read(i)
                for i in zf.infolist()
                if not i.is_dir() and take(i.filename, i.file_size)
            }
    if tarfile.is_tarfile(source):
        with tarfile.open(source) as tf:
            out = {}
            for member in tf.getmembers():
                if member.isfile() and take(member.name, member.size):
                    handle = tf.extractfile(member)
                    assert handle is not None
                    out[Path(member.name).name] = handle.read()
            return out
    raise ValueError(f"{source}: not a model directory, .zip or .tar(.gz) archive")
