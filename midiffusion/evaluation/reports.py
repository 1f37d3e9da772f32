"""The benchmark's files: ``results.json`` (settings, per-slice metrics, summaries),
``results.md`` (the tables) and ``metrics.json``, the default method's part for a model card
(``models publish --metrics``). Each is written atomically and readable by everyone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from midiffusion.evaluation.metrics import METRIC_LABELS
from midiffusion.evaluation.results import EvaluationResults, json_safe
from model_store.card import DEFAULT_PRESET, SamplingSection
from model_store.files import write_text_atomic


def write_reports(results: EvaluationResults, out_dir: Path) -> None:
    write_text_atomic(out_dir / "results.md", markdown_report(results))
    write_text_atomic(out_dir / "results.json", results.to_json())
    card = card_metrics(results, f"every method in {out_dir / 'results.json'}")
    write_text_atomic(out_dir / "metrics.json", json.dumps(json_safe(card), indent=2) + "\n")


def card_metrics(results: EvaluationResults, where: str) -> dict[str, Any]:
    """The default method's summaries per direction, with the seed spread, for a model card."""
    s = results.settings
    seeds = ", ".join(str(x) for x in [s.seed, *s.more_seeds])
    directions = {}
    for name, entry in results.directions.items():
        row = entry.methods.get("midiffusion")
        if row is None or not row.ok:
            continue
        directions[name] = {
            "midiffusion": row.summary,
            "n": entry.n,
            "slices": entry.slices,
            "seeds": entry.seeds or {},
        }
    return {
        "note": f"{'/'.join(s.protocols)} run, {s.slices or 'all'} slices per direction, "
        f"seeds {seeds}; {where}",
        "protocol": results.protocol,
        "settings": asdict(s),
        "environment": results.environment,
        "directions": directions,
    }


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _model_line(results: EvaluationResults) -> str:
    s, m = results.settings, results.model
    if m is None:
        return "No model run (baselines only)"
    section = SamplingSection.model_validate(m.sampling).preset(s.preset)
    sampling = section.model_dump()
    preset = f"preset {s.preset}: " if s.preset not in (None, DEFAULT_PRESET) else ""
    guidance = section.guidance_text(s.guidance)
    samples = s.samples or sampling["samples"]
    antithetic = sampling["antithetic"] if s.antithetic is None else s.antithetic
    pairs = " in antithetic pairs" if antithetic and samples > 1 else ""
    return (
        f"Model `{m.name}` v{m.version} ({m.training_iterations} training "
        f"iterations, {m.parameters:,} parameters); {preset}sampler "
        f"{s.sampler or sampling['sampler']}, "
        f"{s.steps or sampling['steps']} steps, guidance {guidance}, "
        f"mean of {samples} sample{'s' if samples > 1 else ''}{pairs}; "
        f"SDEdit t0 = {s.sdedit_t0} on the levels of a {s.sdedit_steps}-step chain"
    )


def markdown_report(results: EvaluationResults) -> str:
    """The results tables as markdown: metrics, then slice-to-slice consistency."""
    lines = [
        f"{_model_line(results)}; seed {results.settings.seed}. Mean ± standard deviation over "
        "slices (inside the set's mask: the brain, or the whole head on head sets); n = slices per "
        "direction.",
        "",
        "| direction | method | n | SSIM(tar) | SSIM(src) | PSNR (dB) | MSE | NMI(tar) | NMI(src) "
        "| FID | s/slice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction, entry in results.directions.items():
        for method, row in entry.methods.items():
            if not row.ok:
                lines.append(f"| {direction} | {method} | — | {row.status} |" + " |" * 7)
                continue
            su = row.summary
            fid = row.fid
            sec = row.seconds_per_slice
            lines.append(
                f"| {direction} | {method} | {entry.n} | {_fmt(su.get('ssim_tar'))} | "
                f"{_fmt(su.get('ssim_src'))} | {_fmt(su.get('psnr'), 2)} | "
                f"{_fmt(su.get('mse'), 4)} | {_fmt(su.get('nmi_tar'))} | "
                f"{_fmt(su.get('nmi_src'))} | {'—' if fid is None else f'{fid:.1f}'} | "
                f"{'—' if sec is None else f'{sec:.2f}'} |"
            )
    lines += [
        "",
        "FID: Inception-v3 pool features of each method's slices against the ground-truth T1 "
        "slices of the same direction. Over a few dozen slices FID is very noisy (it needs "
        "thousands of images to be stable): read it as a coarse ranking only. "
        "histogram-best keeps, per slice, whichever of histogram / histogram-inverted has the "
        "higher NMI to the source; both are bijections of the source's ranks, so that choice is "
        "close to arbitrary. s/slice: wall time on a shared machine, indicative only.",
        "",
        "Slice-to-slice consistency: mean absolute difference between neighbouring evaluated "
        "slices (inside the mask), and its ratio to the ground truth's (1 = as smooth as real "
        "anatomy, > 1 = flicker).",
        "",
        "| direction | method | adjacent-slice MAD | ground truth | ratio |",
        "|---|---|---|---|---|",
    ]
    for direction, entry in results.directions.items():
        for method, row in entry.methods.items():
            if not row.ok or row.consistency is None:
                continue
            c = row.consistency
            gt, ratio = c.ground_truth_adjacent_mad, c.ratio_to_ground_truth
            lines.append(
                f"| {direction} | {method} | {c.adjacent_mad:.4f} | "
                f"{'—' if gt is None else f'{gt:.4f}'} | "
                f"{'—' if ratio is None else f'{ratio:.2f}'} |"
            )
    lines += _through_plane_lines(results)
    lines += _seed_lines(results)
    return "\n".join(lines) + "\n"


def _through_plane_lines(results: EvaluationResults) -> list[str]:
    rows = [
        (direction, method, row.through_plane)
        for direction, entry in results.directions.items()
        for method, row in entry.methods.items()
        if row.ok and row.through_plane is not None
    ]
    if not rows:
        return []
    lines = [
        "",
        "Through-plane: SSIM of the sagittal and coronal reformats of the evaluated stack to the "
        "ground truth's, and the through-plane gradient energy relative to the ground truth's "
        "(1 = changes between slices as much as anatomy does, > 1 = striping), and each slice's "
        "level against its neighbours' relative to the ground truth's (> 1 = level stripes).",
        "",
        "| direction | method | sagittal SSIM | coronal SSIM | gradient energy ratio "
        "| level jitter ratio |",
        "|---|---|---|---|---|---|",
    ]

    def fmt(value: float | None, digits: int = 3) -> str:
        return "—" if value is None else f"{value:.{digits}f}"

    for direction, method, tp in rows:
        lines.append(
            f"| {direction} | {method} | {fmt(tp.reformat_ssim['sagittal'])} | "
            f"{fmt(tp.reformat_ssim['coronal'])} | {fmt(tp.gradient_energy_ratio, 2)} | "
            f"{fmt(tp.level_jitter_ratio, 2)} |"
        )
    return lines


def _seed_lines(results: EvaluationResults) -> list[str]:
    spread = {d: e.seeds for d, e in results.directions.items() if e.seeds}
    if not spread:
        return []
    lines = [
        "",
        "Across seeds: the stochastic methods again on the same slices (no FID). Each value is "
        "the mean over slices at one seed; every slice of a volume shares the seed's noise, so "
        "a seed is one draw of the whole volume.",
        "",
        "| direction | method | metric | per seed | mean ± sd over seeds | lowest |",
        "|---|---|---|---|---|---|",
    ]
    for direction, methods in spread.items():
        for method, runs in methods.items():
            for key in [k for k in runs[0] if k != "seed"]:
                values = np.array([r[key] for r in runs])
                digits = 2 if key == "psnr" else 3
                per_seed = ", ".join(f"{r['seed']}: {r[key]:.{digits}f}" for r in runs)
                lines.append(
                    f"| {direction} | {method} | {METRIC_LABELS[key]} | {per_seed} | "
                    f"{values.mean():.{digits}f} ± {values.std():.{digits}f} | "
                    f"{values.min():.{digits}f} |"
                )
    return lines
