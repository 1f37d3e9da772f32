"""Helpers for the telemetry tests (this module holds no tests): a model store whose model
averages two draws, and a parsed ``/metrics`` scrape."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

# every metric the issue names for a worker, with the label values that must have samples
WORKER_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "midiff_job_stage_seconds": ("stage", ("queue", "load", "preprocess", "sample", "write")),
    "midiff_sampling_step_seconds": ("", ()),
    "midiff_slices_translated_total": ("", ()),
    "midiff_gpu_memory_bytes": ("", ()),
    "midiff_translation_quality": ("metric", ("nmi_source", "lmi_source", "sample_spread")),
}


def store_with_two_draws(store_root: Path, dest: Path) -> Path:
    """A copy of a model store whose models average two antithetic draws, as the serving
    model does (the card's sampling section; the weights and their sha256 are unchanged)."""
    shutil.copytree(store_root, dest)
    for card_path in dest.glob("*/*/model.json"):
        card = json.loads(card_path.read_text())
        card["sampling"].update(samples=2, antithetic=True)
        card_path.write_text(json.dumps(card, indent=2))
    return dest


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def scrape(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition."""
    return [
        Sample(s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has(samples: list[Sample], name: str) -> bool:
    return any(s.name == name for s in samples)
