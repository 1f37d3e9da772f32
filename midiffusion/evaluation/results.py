"""The benchmark's results, typed: per method, per direction, per run.

``to_dict()`` gives the JSON shape of ``results.json`` (rows that did not run hold only their
``status``); reports and the model card's ``metrics.json`` are made from these objects.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from midiffusion.evaluation.runner import EvalSettings

PROTOCOL = "mni-synth / head-synth / ct-real (docs/evaluation.md)"
OK = "ok"


@dataclass
class Consistency:
    """Mean absolute difference of neighbouring slices, and its ratio to the ground truth's."""

    adjacent_mad: float
    ground_truth_adjacent_mad: float | None
    ratio_to_ground_truth: float | None


@dataclass
class ThroughPlane:
    """Is the output one volume or a stack of slices (``evaluation/through_plane.py``)."""

    reformat_ssim: dict[str, float | None]  # sagittal / coronal reformats against the truth's
    gradient_energy_ratio: float | None  # through-plane gradient energy / the truth's
    level_jitter_ratio: float | None = None  # slice-to-slice level jitter / the truth's


@dataclass
class MethodResult:
    """One row of a direction's table: how a method did, or why it did not run."""

    status: str = OK
    seconds_per_slice: float | None = None
    anchor: dict[str, float | None] | None = None  # midiffusion: the anchor's mean, and before
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_slice: list[dict[str, float]] = field(default_factory=list)
    consistency: Consistency | None = None
    through_plane: ThroughPlane | None = None
    inverted_slices: int | None = None  # histogram-best: how many slices took the inverted map
    chose_inverted: list[bool] | None = None
    fid: float | None = None
    fid_note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"status": self.status}
        out: dict[str, Any] = {"status": self.status, "seconds_per_slice": self.seconds_per_slice}
        if self.anchor is not None:
            out["anchor"] = self.anchor
        out["summary"] = self.summary
        out["per_slice"] = self.per_slice
        out["consistency"] = asdict(self.consistency) if self.consistency else None
        if self.through_plane is not None:
            out["through_plane"] = asdict(self.through_plane)
        if self.chose_inverted is not None:
            out["inverted_slices"] = self.inverted_slices
            out["chose_inverted"] = self.chose_inverted
        out["fid"] = self.fid
        out["fid_note"] = self.fid_note
        return out


@dataclass
class DirectionResult:
    set_name: str
    slices: list[int]
    ground_truth: bool
    methods: dict[str, MethodResult]
    # stochastic methods at every seed: method -> [{"seed": s, metric: mean over slices}, ...]
    seeds: dict[str, list[dict[str, float]]] | None = None

    @property
    def n(self) -> int:
        return len(self.slices)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "set": self.set_name,
            "slices": self.slices,
            "n": self.n,
            "ground_truth": self.ground_truth,
            "methods": {name: row.to_dict() for name, row in self.methods.items()},
        }
        if self.seeds is not None:
            out["seeds"] = self.seeds
        return out


@dataclass
class ModelSummary:
    """What the results record of a model card."""

    name: str
    version: int
    sha256: str
    grid_size: int
    parameters: int
    training_iterations: int | None
    conditioning: dict[str, Any]
    sampling: dict[str, Any]

    @classmethod
    def from_card(cls, card: Any) -> ModelSummary:
        return cls(
            name=card.name,
            version=card.version,
            sha256=card.sha256,
            grid_size=card.grid_size,
            parameters=card.parameters,
            training_iterations=card.training.get("iterations"),
            conditioning=card.conditioning.model_dump(mode="json"),
            sampling=card.sampling.model_dump(mode="json"),
        )


@dataclass
class EvaluationResults:
    settings: EvalSettings
    model: ModelSummary | None
    faithful_model: ModelSummary | None
    environment: dict[str, Any]
    directions: dict[str, DirectionResult] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)  # direction -> figure file name
    protocol: str = PROTOCOL

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "settings": asdict(self.settings),
            "model": asdict(self.model) if self.model else None,
            "faithful_model": asdict(self.faithful_model) if self.faithful_model else None,
            "environment": self.environment,
            "directions": {name: d.to_dict() for name, d in self.directions.items()},
            "figures": self.figures,
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2) + "\n"


def json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats (e.g. PSNR of a perfect match) become strings."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
