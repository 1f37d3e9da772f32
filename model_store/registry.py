"""Model registry: ``<root>/<name>/<version>/{weights.safetensors, model.json, metrics.json}``.

A model directory is trusted only after the sha256 of its weights matches its card. Weights are
safetensors, never pickles.
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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SHIPPED_ROOT = Path(__file__).resolve().parent / "models"
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.json"
METRICS_FILE = "metrics.json"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ModelNotFoundError(LookupError):
    """No such model or version in the store."""


class ModelIntegrityError(RuntimeError):
    """A model directory is incomplete, or its weights do not match the card's sha256."""


# How a model samples when its card and the caller leave a setting out (``models publish``
# writes these unless told otherwise). ``anchor_mean`` / ``anchor_mean_head``: the training
# brains' / whole heads' mean foreground intensity, which whole translated volumes of that kind
# are shifted to (midiffusion/intensity.py); None: off for that kind.
# ``antithetic``: averaged draws pair up on opposite noises (midiffusion/samplers.noise_source).
DEFAULT_SAMPLING: dict[str, Any] = {
    "sampler": "ddim",
    "steps": 20,
    "guidance": 1.0,
    "samples": 1,
    "antithetic": False,
    "anchor_mean": None,
    "anchor_mean_head": None,
}
# the samplers of ``midiffusion/samplers.py`` by name (a test keeps the two equal), for the
# command lines that must not import torch to offer them
SAMPLER_NAMES = ("ddim", "dpmpp-2m", "ddpm", "euler-a")


class ModelCard(BaseModel):
    """What a model is, how it was made, and how to run it (``model.json``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: int = Field(ge=1)
    target_modality: str
    grid_size: int = Field(gt=0)
    data_range: tuple[float, float] = (-1.0, 1.0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    parameters: int = Field(ge=0)
    network: dict[str, Any]
    schedule: dict[str, Any]
    conditioning: dict[str, Any]  # LMI settings and how the noisy state is presented to LMI
    sampling: dict[str, Any]  # defaults: DEFAULT_SAMPLING
    training: dict[str, Any]  # data manifest, steps, compute used, final loss
    data_licences: list[str] = Field(default_factory=list)
    created: str = ""
    notes: str = ""


@dataclass(frozen=True)
class VerifiedModel:
    card: ModelCard
    weights_path: Path
    directory: Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    def default_name(self) -> str:
        names = [n for n in self.names() if self.versions(n)]
        if not names:
            raise ModelNotFoundError(f"the model store at {self.root} holds no models")
        return "t1w" if "t1w" in names else names[0]

    def directory(self, name: str, version: int | None = None) -> Path:
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; models in the store: {known}")
        if version is None:
            version = versions[-1]
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
