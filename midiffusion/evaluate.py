"""``midiffusion evaluate``: every method of the benchmark in one run (benchmark.md).

Directions: T2w, PDw and FLAIR -> T1 on ``mni-synth`` (metrics against the MNI152 T1 inside the
brain mask), the same three on ``head-synth`` (a held-out whole head; metrics inside the head)
and CT -> T1 on ``ct-real`` (no ground truth: SSIM and NMI to the source only).
Every method sees the same slices and the same seed. Every output is multiplied by the brain
mask (the model's translations are, too: background stays background), so all methods are
compared on equal terms.

Methods: ``midiffusion`` (clean LMI, the model card's sampler, steps, guidance and intensity
anchor; ``midiffusion-unanchored`` is the same samples before the anchor), ``faithful``
(published LMI + DDPM chain; only with a faithful-trained model, else recorded as not run),
``sdedit``, ``histogram`` / ``histogram-inverted`` / ``histogram-best`` and ``identity`` (see
``baselines.py``).

Slice-to-slice consistency: the mean absolute difference between neighbouring evaluated slices
(inside either slice's mask), divided by the same figure for the ground truth. About 1: the output
changes from slice to slice as much as real anatomy does; above 1: flicker.

Writes ``results.json`` (settings, per-slice metrics, summaries), ``results.md`` (the tables),
``figure_<direction>.png`` (rows: slices; columns: source | each method | ground truth) and
``metrics.json``, the default method's part for a model card (``models publish --metrics``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from midiffusion.data.geometry import voxel_sizes
from midiffusion.evaluation import baselines, metrics
from midiffusion.pipeline.devices import DEVICE_HELP, resolve_device
from midiffusion.pipeline.intensity import anchor_for
from midiffusion.pipeline.precision import PRECISION_HELP, PRECISIONS
from model_store import DEFAULT_SAMPLING, SAMPLER_NAMES

# direction -> (set, source key, ground-truth key or None)
DIRECTIONS: dict[str, tuple[str, str, str | None]] = {
    "T2w->T1": ("mni-synth", "t2w", "t1"),
    "PDw->T1": ("mni-synth", "pdw", "t1"),
    "FLAIR->T1": ("mni-synth", "flair", "t1"),
    "CT->T1": ("ct-real", "ct", None),
    "head T2w->T1": ("head-synth", "t2w", "t1"),
    "head PDw->T1": ("head-synth", "pdw", "t1"),
    "head FLAIR->T1": ("head-synth", "flair", "t1"),
}
PROTOCOLS = ("mni-synth", "ct-real", "head-synth")
METHOD_GROUPS = ("midiffusion", "faithful", "sdedit", "histogram", "identity")
# the methods whose output depends on the seed (rerun by --more-seeds)
STOCHASTIC = ("midiffusion", "faithful", "sdedit")
# every row of the tables, in order; the histogram group gives three, and midiffusion two when
# its card has an intensity anchor (the same samples before the anchor's shift)
ROWS = (
    "midiffusion",
    "midiffusion-unanchored",
    "faithful",
    "sdedit",
    "histogram",
    "histogram-inverted",
    "histogram-best",
    "identity",
)
METRIC_LABELS = {
    "ssim_tar": "SSIM(tar)",
    "ssim_src": "SSIM(src)",
    "psnr": "PSNR",
    "mse": "MSE",
    "nmi_tar": "NMI(tar)",
    "nmi_src": "NMI(src)",
}
READABLE = 0o644  # mkstemp creates 0600 files; results are meant to be shared
NO_FAITHFUL = "not run: no faithful-trained model in the store (pass --faithful-model NAME)"


class EvaluationError(RuntimeError):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class EvalSettings:
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    directions: list[str] | None = None  # default: every direction of the protocols
    methods: list[str] = field(default_factory=lambda: list(METHOD_GROUPS))
    model: str | None = None  # default: the store's default model
    version: int | None = None
    faithful_model: str | None = None
    faithful_steps: int = 1000
    slices: int | None = None  # evenly spaced subset; default every slice of the set
    steps: int | None = None  # default: the model card's
    sampler: str | None = None
    guidance: float | None = None
    samples: int | None = None  # default: the model card's
    antithetic: bool | None = None  # default: the model card's
    sdedit_t0: int = 500
    seed: int = 0
    more_seeds: list[int] = field(default_factory=list)  # stochastic methods again, no FID
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    prior_set: str = "t1-train"
    fid: bool = True
    figure_rows: int = 4


# --------------------------------------------------------------------------------------------
# small pieces
# --------------------------------------------------------------------------------------------
def select_slices(total: int, wanted: int | None) -> np.ndarray:
    """``wanted`` evenly spaced slice indices out of ``total`` (all when None or too many)."""
    if wanted is None or wanted >= total:
        return np.arange(total)
    if wanted < 1:
        raise EvaluationError(f"--slices must be at least 1, got {wanted}")
    return np.unique(np.linspace(0, total - 1, wanted).round().astype(int))


def slice_consistency(volume: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference between neighbouring slices, inside either slice's mask."""
    diffs = []
    for k in range(len(volume) - 1):
        m = mask[k] | mask[k + 1]
        if m.any():
            diffs.append(float(np.abs(volume[k + 1] - volume[k])[m].mean()))
    return float(np.mean(diffs)) if diffs else float("nan")


def _slices(img, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(np.asarray(img.dataobj, np.float32), 2, 0)[idx])


class _Bar:
    """A tqdm bar driven by the samplers' ``progress(done, total)`` callbacks."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.bar = tqdm(desc=desc, unit="step", leave=False, disable=not enabled, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _load_translator(
    store, name: str, version: int | None, device: str, precision: str, *, faithful: bool
):
    from midiffusion.pipeline.translate import Translator

    verified = store.verified(name, version)
    card = verified.card
    mode = card.conditioning.get("lmi", {}).get("mode", "clean")
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
    return Translator.load(card.model_dump(), verified.weights_path, device, precision), card


def _card_summary(card) -> dict:
    return {
        "name": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "grid_size": card.grid_size,
        "parameters": card.parameters,
        "training_iterations": card.training.get("iterations"),
        "conditioning": card.conditioning,
        "sampling": card.sampling,
    }


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
@dataclass
class _Direction:
    name: str
    set_name: str
    slice_index: np.ndarray
    source: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    pixel_mm2: float  # the area of one grid pixel (the anchor tells brains from heads by it)


def _directions(
    settings: EvalSettings, data_root: Path | None, grid: int | None
) -> list[_Direction]:
    from midiffusion.data.sets import load_volumes

    wanted = settings.directions or [d for d, v in DIRECTIONS.items() if v[0] in settings.protocols]
    unknown = [d for d in wanted if d not in DIRECTIONS]
    if unknown:
        raise EvaluationError(f"unknown direction(s) {unknown}; accepted: {list(DIRECTIONS)}")
    volumes: dict[str, dict] = {}
    out = []
    for name in wanted:
        set_name, src_key, truth_key = DIRECTIONS[name]
        if set_name not in volumes:
            volumes[set_name] = load_volumes(set_name, data_root)
        vols = volumes[set_name]
        shape = vols["mask"].shape
        if grid is not None and shape[:2] != (grid, grid):
            raise EvaluationError(
                f"set {set_name} is built on a {shape[0]}x{shape[1]} grid but the model works "
                f"on {grid}x{grid}; rebuild the set with the model's grid"
            )
        idx = select_slices(shape[2], settings.slices)
        out.append(
            _Direction(
                name=name,
                set_name=set_name,
                slice_index=idx,
                source=np.clip(_slices(vols[src_key], idx), 0, 1),
                mask=_slices(vols["mask"], idx) > 0,
                truth=np.clip(_slices(vols[truth_key], idx), 0, 1) if truth_key else None,
                pixel_mm2=float(np.prod(voxel_sizes(vols["mask"].affine)[:2])),
            )
        )
    return out


def evaluate(
    settings: EvalSettings,
    out_dir: Path,
    *,
    store=None,
    data_root: Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark and write its files into ``out_dir``; returns the results dict."""
    from midiffusion.data.sets import training_slices
    from model_store import ModelStore

    unknown = sorted(set(settings.methods) - set(METHOD_GROUPS))
    if unknown:
        raise EvaluationError(f"unknown method(s) {unknown}; accepted: {list(METHOD_GROUPS)}")
    store = store or ModelStore()
    try:
        device = resolve_device(settings.device)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    translator = card = faithful = None
    grid = None
    if {"midiffusion", "sdedit"} & set(settings.methods):  # the baselines need no model
        model_name = settings.model or store.default_name()
        translator, card = _load_translator(
            store, model_name, settings.version, device, settings.precision, faithful=False
        )
        grid = card.grid_size
    if "faithful" in settings.methods and settings.faithful_model:
        faithful = _load_translator(
            store, settings.faithful_model, None, device, settings.precision, faithful=True
        )
        if grid is not None and faithful[1].grid_size != grid:
            raise EvaluationError("the faithful model's grid differs from the main model's")
        grid = faithful[1].grid_size
    directions = _directions(settings, data_root, grid)
    prior = None
    if "histogram" in settings.methods:
        prior = baselines.target_prior(training_slices(settings.prior_set, data_root))
    fid_cache: dict[str, np.ndarray] = {}

    results: dict = {
        "protocol": "mni-synth / head-synth / ct-real (docs/evaluation.md)",
        "settings": asdict(settings),
        "model": _card_summary(card) if card else None,
        "faithful_model": _card_summary(faithful[1]) if faithful else None,
        "environment": {
            "torch": torch.__version__,
            "device": device,
            "precision": translator.precision if translator else None,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
        "directions": {},
    }
    figures = {}
    for d in directions:
        log(f"== {d.name}: {len(d.slice_index)} slices of {d.set_name}")
        entry, outputs = _run_direction(
            d, settings, translator, faithful, prior, fid_cache, device, progress
        )
        results["directions"][d.name] = entry
        figures[d.name] = _figure(d, outputs, entry, settings.figure_rows, out_dir)
        if settings.more_seeds:
            entry["seeds"] = _seed_spread(
                d, entry, settings, translator, faithful, fid_cache, device, progress, log
            )
        for method, row in entry["methods"].items():
            if row["status"] == "ok":
                s = row["summary"]
                key = "ssim_tar" if "ssim_tar" in s else "ssim_src"
                log(f"   {method:<24}{METRIC_LABELS[key]} {s[key]['mean']:.3f}")
    results["figures"] = figures
    _write_text(out_dir / "results.md", markdown_report(results))
    _write_text(out_dir / "results.json", json.dumps(_json_safe(results), indent=2) + "\n")
    card = card_metrics(results, f"every method in {out_dir / 'results.json'}")
    _write_text(out_dir / "metrics.json", json.dumps(_json_safe(card), indent=2) + "\n")
    return results


def card_metrics(results: dict, where: str) -> dict:
    """The default method's summaries per direction, with the seed spread, for a model card."""
    s = results["settings"]
    seeds = ", ".join(str(x) for x in [s["seed"], *s["more_seeds"]])
    directions = {}
    for name, entry in results["directions"].items():
        row = entry["methods"].get("midiffusion", {})
        if row.get("status") != "ok":
            continue
        directions[name] = {
            "midiffusion": row["summary"],
            "n": entry["n"],
            "slices": entry["slices"],
            "seeds": entry.get("seeds", {}),
        }
    return {
        "note": f"{'/'.join(s['protocols'])} run, {s['slices'] or 'all'} slices per direction, "
        f"seeds {seeds}; {where}",
        "protocol": results["protocol"],
        "settings": s,
        "environment": results["environment"],
        "directions": directions,
    }


def _run_direction(
    d: _Direction,
    settings: EvalSettings,
    translator,
    faithful,
    prior: np.ndarray | None,
    fid_cache: dict[str, np.ndarray],
    device: str,
    progress: bool,
) -> tuple[dict, dict[str, np.ndarray]]:
    outputs: dict[str, np.ndarray] = {}
    rows: dict[str, dict] = {}
    extra: dict[str, dict] = {}

    def timed(name: str, fn: Callable[[], np.ndarray]) -> None:
        start = time.perf_counter()
        outputs[name] = fn() * d.mask
        rows[name] = {
            "status": "ok",
            "seconds_per_slice": (time.perf_counter() - start) / len(d.source),
        }

    common = {"seed": settings.seed, "batch_size": settings.batch_size}
    for group in settings.methods:
        if group == "midiffusion":
            bar = _Bar(f"{d.name} midiffusion", progress)
            timed(
                "midiffusion",
                lambda bar=bar: translator.translate_slices(
                    d.source,
                    steps=settings.steps,
                    sampler=settings.sampler,
                    guidance=settings.guidance,
                    samples=settings.samples,
                    antithetic=settings.antithetic,
                    progress=bar,
                    **common,
                ),
            )
            bar.close()
            target = anchor_for(translator.sampling, d.mask, d.pixel_mm2)
            if target is not None:
                # the evaluated slices span the whole brain evenly, as the anchor assumes
                raw = outputs["midiffusion-unanchored"] = outputs["midiffusion"]
                rows["midiffusion-unanchored"] = dict(rows["midiffusion"])
                outputs["midiffusion"] = translator.anchor(raw, d.mask, d.pixel_mm2)
                before = float(raw[d.mask].mean()) if d.mask.any() else None
                rows["midiffusion"]["anchor"] = {"mean": target, "mean_before": before}
        elif group == "faithful":
            if faithful is None:
                rows["faithful"] = {"status": NO_FAITHFUL}
                continue
            bar = _Bar(f"{d.name} faithful", progress)
            timed(
                "faithful",
                lambda bar=bar: faithful[0].translate_slices(
                    d.source,
                    steps=settings.faithful_steps,
                    sampler="ddpm",
                    guidance=1.0,
                    samples=1,
                    progress=bar,
                    **common,
                ),
            )
            bar.close()
        elif group == "sdedit":
            bar = _Bar(f"{d.name} sdedit", progress)
            timed(
                "sdedit",
                lambda bar=bar: baselines.sdedit(
                    translator,
                    d.source,
                    t0=settings.sdedit_t0,
                    steps=settings.steps,
                    sampler=settings.sampler,
                    progress=bar,
                    **common,
                ),
            )
            bar.close()
        elif group == "histogram":
            assert prior is not None
            timed("histogram", lambda: baselines.histogram_map(d.source, d.mask, prior))
            timed(
                "histogram-inverted",
                lambda: baselines.histogram_map(d.source, d.mask, prior, invert=True),
            )
            best, chose = baselines.histogram_best(
                outputs["histogram"], outputs["histogram-inverted"], d.source, d.mask
            )
            outputs["histogram-best"] = best
            rows["histogram-best"] = {"status": "ok", "seconds_per_slice": None}
            extra["histogram-best"] = {"inverted_slices": int(chose.sum()), "chose_inverted": chose}
        elif group == "identity":
            timed("identity", lambda: baselines.identity(d.source))

    truth_consistency = slice_consistency(d.truth, d.mask) if d.truth is not None else None
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
        row["summary"] = metrics.summarise(per_slice)
        row["per_slice"] = per_slice
        mad = slice_consistency(out, d.mask)
        row["consistency"] = {
            "adjacent_mad": mad,
            "ground_truth_adjacent_mad": truth_consistency,
            "ratio_to_ground_truth": mad / truth_consistency if truth_consistency else None,
        }
        for key, value in extra.get(name, {}).items():
            row[key] = value.tolist() if isinstance(value, np.ndarray) else value

    if settings.fid and d.truth is not None:
        _add_fid(d, outputs, rows, extra, fid_cache, device, progress)
    else:
        reason = "not computed (--no-fid)" if not settings.fid else "no ground truth"
        for row in rows.values():
            if row["status"] == "ok":
                row["fid"] = None
                row["fid_note"] = reason

    entry = {
        "set": d.set_name,
        "slices": d.slice_index.tolist(),
        "n": len(d.slice_index),
        "ground_truth": d.truth is not None,
        "methods": {name: rows[name] for name in ROWS if name in rows},
    }
    return entry, outputs


def _seed_spread(
    d: _Direction,
    entry: dict,
    settings: EvalSettings,
    translator,
    faithful,
    fid_cache: dict[str, np.ndarray],
    device: str,
    progress: bool,
    log: Callable[[str], None],
) -> dict[str, list[dict]]:
    """Each stochastic method's mean metrics at the main seed and at ``more_seeds``: the same
    slices, no FID. Every slice of a volume shares the seed's noise, so a seed is one draw of
    the whole volume, and one seed alone can mislead."""
    keys = ("ssim_tar", "psnr") if d.truth is not None else ("ssim_src", "nmi_src")
    groups = [m for m in settings.methods if m in STOCHASTIC and (m != "faithful" or faithful)]
    if not groups:
        return {}
    runs = [(settings.seed, entry["methods"])]
    for seed in settings.more_seeds:
        log(f"   seed {seed}: {', '.join(groups)}")
        again = replace(settings, seed=seed, methods=groups, fid=False)
        other, _ = _run_direction(d, again, translator, faithful, None, fid_cache, device, progress)
        runs.append((seed, other["methods"]))
    # a rerun holds exactly the stochastic rows ("midiffusion", "midiffusion-unanchored", ...)
    names = [name for name, row in runs[-1][1].items() if row["status"] == "ok"]
    return {
        name: [
            {"seed": seed, **{k: methods[name]["summary"][k]["mean"] for k in keys}}
            for seed, methods in runs
        ]
        for name in names
    }


def _add_fid(d, outputs, rows, extra, cache, device, progress) -> None:
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
    truth = features(f"{d.set_name}:truth:{d.slice_index.tolist()}", d.truth * d.mask)
    bar.update()
    feats = {}
    for name in names:
        feats[name] = features(f"{d.name}:{name}", outputs[name])
        bar.update()
    bar.close()
    if "histogram-best" in outputs:
        # the chosen images are the plain or inverted ones: reuse their features
        chose = extra["histogram-best"]["chose_inverted"]
        feats["histogram-best"] = np.where(
            chose[:, None], feats["histogram-inverted"], feats["histogram"]
        )
    for name, f in feats.items():
        rows[name]["fid"] = frechet_distance(f, truth) if len(f) >= 2 else None
        rows[name]["fid_note"] = (
            f"over {len(f)} slices: far too few for a stable FID, compare only coarsely"
        )


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_safe(value):
    """Plain JSON: non-finite floats (e.g. PSNR of a perfect match) become strings."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat:
        return "—"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown_report(results: dict) -> str:
    """The results tables as markdown: metrics, then slice-to-slice consistency."""
    s, m = results["settings"], results["model"]
    if m is None:
        model = "No model run (baselines only)"
    else:
        guidance = s["guidance"] if s["guidance"] is not None else m["sampling"].get("guidance")
        samples = s.get("samples") or m["sampling"].get("samples", DEFAULT_SAMPLING["samples"])
        antithetic = s.get("antithetic")
        if antithetic is None:
            antithetic = m["sampling"].get("antithetic", DEFAULT_SAMPLING["antithetic"])
        pairs = " in antithetic pairs" if antithetic and samples > 1 else ""
        model = (
            f"Model `{m['name']}` v{m['version']} ({m['training_iterations']} training "
            f"iterations, {m['parameters']:,} parameters); sampler "
            f"{s['sampler'] or m['sampling'].get('sampler')}, "
            f"{s['steps'] or m['sampling'].get('steps')} steps, guidance {guidance}, "
            f"mean of {samples} sample{'s' if samples > 1 else ''}{pairs}; "
            f"SDEdit t0 = {s['sdedit_t0']}"
        )
    lines = [
        f"{model}; seed {s['seed']}. Mean ± standard deviation over slices (inside the brain "
        "mask); n = slices per direction.",
        "",
        "| direction | method | n | SSIM(tar) | SSIM(src) | PSNR (dB) | MSE | NMI(tar) | NMI(src) "
        "| FID | s/slice |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for direction, entry in results["directions"].items():
        for method, row in entry["methods"].items():
            if row["status"] != "ok":
                lines.append(f"| {direction} | {method} | — | {row['status']} |" + " |" * 7)
                continue
            su = row["summary"]
            fid = row.get("fid")
            sec = row.get("seconds_per_slice")
            lines.append(
                f"| {direction} | {method} | {entry['n']} | {_fmt(su.get('ssim_tar'))} | "
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
    for direction, entry in results["directions"].items():
        for method, row in entry["methods"].items():
            if row["status"] != "ok":
                continue
            c = row["consistency"]
            gt, ratio = c["ground_truth_adjacent_mad"], c["ratio_to_ground_truth"]
            lines.append(
                f"| {direction} | {method} | {c['adjacent_mad']:.4f} | "
                f"{'—' if gt is None else f'{gt:.4f}'} | "
                f"{'—' if ratio is None else f'{ratio:.2f}'} |"
            )
    lines += _seed_lines(results)
    return "\n".join(lines) + "\n"


def _seed_lines(results: dict) -> list[str]:
    spread = {d: e["seeds"] for d, e in results["directions"].items() if e.get("seeds")}
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


def _figure(d: _Direction, outputs: dict, entry: dict, n_rows: int, out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rows evenly spaced over the middle of the slab: the end slices hold little brain
    n = len(d.source)
    rows = np.unique(np.linspace(0.15 * (n - 1), 0.85 * (n - 1), min(n_rows, n)).round())
    rows = rows.astype(int)
    columns = [("source", d.source)] + [(n, outputs[n]) for n in ROWS if n in outputs]
    if d.truth is not None:
        columns.append(("ground truth", d.truth))
    key = "ssim_tar" if d.truth is not None else "ssim_src"
    fig, axes = plt.subplots(
        len(rows),
        len(columns),
        figsize=(1.7 * len(columns), 1.85 * len(rows)),
        dpi=100,
        squeeze=False,
    )
    for r, k in enumerate(rows):
        for c, (name, images) in enumerate(columns):
            ax = axes[r, c]
            ax.imshow(np.rot90(images[k]), cmap="gray", vmin=0, vmax=1)  # anterior up
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"slice {int(d.slice_index[k])}", fontsize=7)
            if name in outputs:
                value = entry["methods"][name]["per_slice"][k][key]
                ax.set_xlabel(f"{METRIC_LABELS[key]} {value:.2f}", fontsize=7)
    fig.suptitle(f"{d.name} ({d.set_name})", fontsize=9)
    fig.tight_layout()
    path = out_dir / f"figure_{d.name.replace('->', '_to_').replace(' ', '_')}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.chmod(tmp, READABLE)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path.name


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        nargs="+",
        choices=PROTOCOLS,
        default=list(PROTOCOLS),
        help="mni-synth (T2w/PDw/FLAIR -> T1, against MNI152 T1), head-synth (the same on a "
        "held-out whole head) and/or ct-real (CT -> T1)",
    )
    parser.add_argument("--directions", nargs="+", choices=list(DIRECTIONS), help="a subset")
    parser.add_argument("--methods", nargs="+", choices=METHOD_GROUPS, default=list(METHOD_GROUPS))
    parser.add_argument("--out", type=Path, default=Path("out/evaluation"), help="output folder")
    parser.add_argument("-m", "--model", help="clean model name (default: the store's default)")
    parser.add_argument("--version", type=int)
    parser.add_argument("--store", type=Path, help="model store root")
    parser.add_argument("--data-dir", type=Path, help="data root (default: $MIDIFF_DATA_DIR)")
    parser.add_argument("--faithful-model", help="a model trained with faithful LMI")
    parser.add_argument(
        "--faithful-steps",
        type=int,
        default=1000,
        help="DDPM steps for the faithful method (1000 = the published chain; fewer subsample it)",
    )
    parser.add_argument("--slices", type=int, help="evenly spaced slices per direction (all)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model card's)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES)
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--samples", type=int, help="translations averaged per slice (card's)")
    parser.add_argument(
        "--antithetic",
        choices=("on", "off"),
        help="pair the averaged draws on opposite noises (default: the model card's)",
    )
    parser.add_argument("--sdedit-t0", type=int, default=500, help="SDEdit start timestep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--more-seeds",
        type=int,
        nargs="+",
        default=[],
        help="rerun the stochastic methods at these seeds too and report the spread",
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    parser.add_argument("--prior-set", default="t1-train", help="histogram baseline's T1 prior")
    parser.add_argument("--no-fid", action="store_true", help="skip FID (Inception on the CPU)")
    parser.add_argument("--figure-rows", type=int, default=4)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def settings_from_args(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(
        protocols=list(args.protocol),
        directions=args.directions,
        methods=list(args.methods),
        model=args.model,
        version=args.version,
        faithful_model=args.faithful_model,
        faithful_steps=args.faithful_steps,
        slices=args.slices,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        samples=args.samples,
        antithetic=None if args.antithetic is None else args.antithetic == "on",
        sdedit_t0=args.sdedit_t0,
        seed=args.seed,
        more_seeds=list(args.more_seeds),
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        prior_set=args.prior_set,
        fid=not args.no_fid,
        figure_rows=args.figure_rows,
    )


def run(args: argparse.Namespace) -> int:
    from midiffusion.evaluation.fid import FIDUnavailableError
    from model_store import ModelIntegrityError, ModelNotFoundError, ModelStore

    try:
        results = evaluate(
            settings_from_args(args),
            args.out,
            store=ModelStore(args.store),
            data_root=args.data_dir,
            progress=not args.quiet,
        )
    except (
        EvaluationError,
        FileNotFoundError,
        ModelNotFoundError,
        ModelIntegrityError,
        FIDUnavailableError,
        ValueError,
    ) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(markdown_report(results))
    print(f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    for name in results["figures"].values():
        print(f"figure: {args.out / name}")
    return 0
