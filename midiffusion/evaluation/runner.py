"""The benchmark run (docs/evaluation.md): every method on every direction, same slices and seed.

For each direction: run the methods (``methods.METHODS``), score every row per slice against the
ground truth and the source, measure slice-to-slice consistency, FID where there is a ground
truth, and with ``more_seeds`` the stochastic methods again at other seeds. Then write the
reports and figures (``reports``, ``figures``).

Slice-to-slice consistency: the mean absolute difference between neighbouring evaluated slices
(inside either slice's mask), divided by the same figure for the ground truth. About 1: the output
changes from slice to slice as much as real anatomy does; above 1: flicker.

Models come from the ``store`` the caller passes (anything with ``verified(name, version)`` and
``default_name()``, as ``model_store.ModelStore``): the science does not look models up itself.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from midiffusion.evaluation import baselines, metrics
from midiffusion.evaluation.directions import (
    REPORTING,
    Direction,
    EvaluationError,
    direction_names,
    load_directions,
)
from midiffusion.evaluation.figures import figure
from midiffusion.evaluation.methods import METHOD_GROUPS, METHODS, ROWS, STOCHASTIC, MethodContext
from midiffusion.evaluation.reports import write_reports
from midiffusion.evaluation.results import (
    Consistency,
    DirectionResult,
    EvaluationResults,
    MethodResult,
    ModelSummary,
    ThroughPlane,
)
from midiffusion.evaluation.through_plane import through_plane
from midiffusion.pipeline.devices import resolve_device
from model_store.card import FAITHFUL_SAMPLING

__all__ = ["EvalSettings", "EvaluationError", "evaluate"]


@dataclass
class EvalSettings:
    protocols: list[str] = field(default_factory=lambda: list(REPORTING))
    directions: list[str] | None = None  # default: every direction of the protocols
    methods: list[str] = field(default_factory=lambda: list(METHOD_GROUPS))
    model: str | None = None  # default: the store's default model
    version: int | None = None
    faithful_model: str | None = None
    faithful_steps: int = FAITHFUL_SAMPLING.steps
    slices: int | None = None  # evenly spaced subset; default every slice of the set
    preset: str | None = None  # the card's sampling defaults, or one of its presets
    steps: int | None = None  # default: the model card's (or its preset's)
    sampler: str | None = None
    guidance: float | None = None
    samples: int | None = None  # default: the model card's
    antithetic: bool | None = None  # default: the model card's
    sdedit_t0: int = 500
    # SDEdit's step sizes: those of an 8-step chain whatever the card samples with, so that a
    # card with fewer steps does not weaken the baseline (it takes the 4 levels below t0 = 500)
    sdedit_steps: int = 8
    seed: int = 0
    more_seeds: list[int] = field(default_factory=list)  # stochastic methods again, no FID
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    prior_set: str = "t1-train"
    fid: bool = True
    figure_rows: int = 4


def _load_translator(
    store, name: str, version: int | None, device: str, precision: str, *, faithful: bool
):
    from midiffusion.pipeline.translate import Translator

    verified = store.verified(name, version)
    card = verified.card
    mode = card.lmi_mode()
    if faithful and mode != "faithful":
        raise EvaluationError(
            f"model {card.name!r} was trained with {mode} conditioning; the faithful method "
            "needs a model trained with faithful LMI (conditioning.lmi.mode = 'faithful')"
        )
    if not faithful and mode == "faithful":
        raise EvaluationError(
            f"model {card.name!r} is faithful-trained: pass it as --faithful-model, and a "
            "clean model as --model"
        )
    return Translator.load(card, verified.weights_path, device, precision), card


def evaluate(
    settings: EvalSettings,
    out_dir: Path,
    *,
    store: Any = None,
    data_root: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> EvaluationResults:
    """Run the benchmark and write its files into ``out_dir``. ``store``: where the models come
    from (``model_store.ModelStore``); only the methods that run a model need one."""
    from midiffusion.data.sets import training_slices

    unknown = sorted(set(settings.methods) - set(METHOD_GROUPS))
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; accepted: {list(METHOD_GROUPS)}")
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    translator = card = faithful = None
    grid = None
    needs_model = any(METHODS[m].needs_model for m in settings.methods)
    wants_faithful = "faithful" in settings.methods and settings.faithful_model
    if (needs_model or wants_faithful) and store is None:
        raise EvaluationError("the methods asked for run a model: pass a model store")
    if needs_model:  # the baselines need no model
        model_name = settings.model or store.default_name()
        translator, card = _load_translator(
            store, model_name, settings.version, device, settings.precision, faithful=False
        )
        grid = card.grid_size
    if wants_faithful:
        faithful = _load_translator(
            store, settings.faithful_model, None, device, settings.precision, faithful=True
        )
        if grid is not None and faithful[1].grid_size != grid:
            raise EvaluationError("the faithful model's grid differs from the main model's")
        grid = faithful[1].grid_size
    names = direction_names(settings.protocols, settings.directions)
    directions = load_directions(names, settings.slices, data_root, grid)
    prior = None
    if any(METHODS[m].needs_prior for m in settings.methods):
        prior = baselines.target_prior(training_slices(settings.prior_set, data_root))
    ctx = MethodContext(
        settings=settings,
        translator=translator,
        faithful=faithful[0] if faithful else None,
        prior=prior,
        progress=progress,
    )
    fid_cache: dict[str, np.ndarray] = {}

    results = EvaluationResults(
        settings=settings,
        model=ModelSummary.from_card(card) if card else None,
        faithful_model=ModelSummary.from_card(faithful[1]) if faithful else None,
        environment={
            "torch": torch.__version__,
            "device": device,
            "precision": translator.precision if translator else None,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    )
    for d in directions:
        log(f"== {d.name}: {len(d.slice_index)} slices of {d.set_name}")
        entry, outputs = run_direction(d, ctx, fid_cache, device)
        results.directions[d.name] = entry
        results.figures[d.name] = figure(d, outputs, entry, settings.figure_rows, out_dir)
        if settings.more_seeds:
            entry.seeds = seed_spread(d, entry, ctx, fid_cache, device, log)
        for method, row in entry.methods.items():
            if row.ok:
                key = "ssim_tar" if "ssim_tar" in row.summary else "ssim_src"
                label = metrics.METRIC_LABELS[key]
                log(f"   {method:<24}{label} {row.summary[key]['mean']:.3f}")
    write_reports(results, out_dir)
    return results


def run_direction(
    d: Direction, ctx: MethodContext, fid_cache: dict[str, np.ndarray], device: str
) -> tuple[DirectionResult, dict[str, np.ndarray]]:
    """Every method of ``ctx.settings`` on one direction: its scored rows and their images."""
    outputs: dict[str, np.ndarray] = {}
    rows: dict[str, MethodResult] = {}
    for group in ctx.settings.methods:
        for name, (images, result) in METHODS[group].run(ctx, d).items():
            rows[name] = result
            if images is not None:
                outputs[name] = images

    truth_consistency = metrics.slice_consistency(d.truth, d.mask) if d.truth is not None else None
    for name, out in outputs.items():
        per_slice = [
            metrics.slice_metrics(o, s, t, m)
            for o, s, t, m in zip(
                out,
                d.source,
                d.truth if d.truth is not None else [None] * len(out),
                d.mask,
                strict=True,
            )
        ]
        row = rows[name]
        row.summary = metrics.summarise(per_slice)
        row.per_slice = per_slice
        mad = metrics.slice_consistency(out, d.mask)
        row.consistency = Consistency(
            adjacent_mad=mad,
            ground_truth_adjacent_mad=truth_consistency,
            ratio_to_ground_truth=mad / truth_consistency if truth_consistency else None,
        )
        if d.truth is not None and len(out) > 1:
            row.through_plane = ThroughPlane(**through_plane(out, d.truth, d.mask))

    if ctx.settings.fid and d.truth is not None:
        _add_fid(d, outputs, rows, fid_cache, device, ctx.progress)
    else:
        reason = "not computed (--no-fid)" if not ctx.settings.fid else "no ground truth"
        for row in rows.values():
            if row.ok:
                row.fid = None
                row.fid_note = reason

    entry = DirectionResult(
        set_name=d.set_name,
        slices=d.slice_index.tolist(),
        ground_truth=d.truth is not None,
        methods={name: rows[name] for name in ROWS if name in rows},
    )
    return entry, outputs


def seed_spread(
    d: Direction,
    entry: DirectionResult,
    ctx: MethodContext,
    fid_cache: dict[str, np.ndarray],
    device: str,
    log: Callable[[str], None],
) -> dict[str, list[dict[str, float]]]:
    """Each stochastic method's mean metrics at the main seed and at ``more_seeds``: the same
    slices, no FID. Every slice of a volume shares the seed's noise, so a seed is one draw of
    the whole volume, and one seed alone can mislead."""
    settings = ctx.settings
    keys = ("ssim_tar", "psnr") if d.truth is not None else ("ssim_src", "nmi_src")
    groups = [m for m in settings.methods if m in STOCHASTIC and (m != "faithful" or ctx.faithful)]
    if not groups:
        return {}
    runs = [(settings.seed, entry.methods)]
    for seed in settings.more_seeds:
        log(f"   seed {seed}: {', '.join(groups)}")
        again = replace(ctx, settings=replace(settings, seed=seed, methods=groups, fid=False))
        other, _ = run_direction(d, again, fid_cache, device)
        runs.append((seed, other.methods))
    # a rerun holds exactly the stochastic rows ("midiffusion", "midiffusion-unanchored", ...)
    names = [name for name, row in runs[-1][1].items() if row.ok]
    return {
        name: [
            {"seed": seed, **{k: methods[name].summary[k]["mean"] for k in keys}}
            for seed, methods in runs
        ]
        for name in names
    }


def _add_fid(
    d: Direction,
    outputs: dict[str, np.ndarray],
    rows: dict[str, MethodResult],
    cache: dict[str, np.ndarray],
    device: str,
    progress: bool,
) -> None:
    from midiffusion.evaluation.fid import frechet_distance, inception_features

    def features(key: str, images: np.ndarray) -> np.ndarray:
        if key not in cache:
            cache[key] = inception_features(images, device=device)
        return cache[key]

    names = [n for n in outputs if n != "histogram-best"]
    bar = tqdm(
        total=len(names) + 1,
        desc=f"{d.name} FID",
        leave=False,
        disable=not progress,
        file=sys.stderr,
    )
    assert d.truth is not None
    truth = features(f"{d.set_name}:truth:{d.slice_index.tolist()}", d.truth * d.mask)
    bar.update()
    feats = {}
    for name in names:
        feats[name] = features(f"{d.name}:{name}", outputs[name])
        bar.update()
    bar.close()
    if "histogram-best" in outputs:
        # the chosen images are the plain or inverted ones: reuse their features
        chose = np.asarray(rows["histogram-best"].chose_inverted, dtype=bool)
        feats["histogram-best"] = np.where(
            chose[:, None], feats["histogram-inverted"], feats["histogram"]
        )
    for name, f in feats.items():
        rows[name].fid = frechet_distance(f, truth) if len(f) >= 2 else None
        rows[
            name
        ].fid_note = f"over {len(f)} slices: far too few for a stable FID, compare only coarsely"
