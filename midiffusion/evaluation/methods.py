"""The compared methods (docs/evaluation.md), registered by name in table order.

``midiffusion`` (clean LMI, the model card's sampler, steps, guidance, source lookup and
intensity anchor; ``midiffusion-unanchored`` is the same translation before the anchor),
``faithful`` (published LMI + DDPM chain; only with a faithful-trained model, else recorded as
not run), ``sdedit``, ``histogram`` / ``histogram-inverted`` / ``histogram-best`` and
``identity`` (see ``baselines.py``). Every method sees the same slices and the same seed, and
every output is multiplied by the brain mask (the model's translations are, too), so all are
compared on equal terms. On a set finer than the model's grid, the model's methods translate at
the model's grid and their results are brought back to the set's (``Direction.to_model_grid``);
everything is scored at the set's grid. A method gives one or more table rows; the runner
scores them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from midiffusion.evaluation import baselines
from midiffusion.evaluation.directions import Direction
from midiffusion.evaluation.results import MethodResult
from midiffusion.pipeline.intensity import anchor_for, input_kind
from model_store.card import FAITHFUL_SAMPLING

if TYPE_CHECKING:
    from midiffusion.evaluation.runner import EvalSettings

NO_FAITHFUL = "not run: no faithful-trained model in the store (pass --faithful-model NAME)"

# row name -> (its translated slices, or None when it did not run; its result so far)
Rows = dict[str, tuple[np.ndarray | None, MethodResult]]


@dataclass(frozen=True)
class MethodContext:
    """What a method may use: the settings, the loaded models and the histogram prior."""

    settings: EvalSettings
    translator: Any  # midiffusion.pipeline.translate.Translator (None: no model method runs)
    faithful: Any  # the faithful-trained Translator, or None
    prior: np.ndarray | None
    progress: bool


@dataclass(frozen=True)
class Method:
    run: Callable[[MethodContext, Direction], Rows]
    rows: tuple[str, ...]  # the table rows it can give, in order
    stochastic: bool = False  # depends on the seed: rerun by --more-seeds
    needs_model: bool = False  # the main (clean) model
    needs_prior: bool = False  # the target prior of the training set


class ProgressBar:
    """A tqdm bar driven by the samplers' ``progress(done, total)`` callbacks."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.bar = tqdm(desc=desc, unit="step", leave=False, disable=not enabled, file=sys.stderr)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _timed(d: Direction, fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, MethodResult]:
    start = time.perf_counter()
    images = fn() * d.mask
    return images, MethodResult(seconds_per_slice=(time.perf_counter() - start) / len(d.source))


def _common(s: EvalSettings) -> dict[str, Any]:
    return {"seed": s.seed, "batch_size": s.batch_size}


def _kind(d: Direction) -> str:
    """The direction's input kind, judged as a translated volume's is."""
    return input_kind(d.mask, d.pixel_mm2)


def _midiffusion(ctx: MethodContext, d: Direction) -> Rows:
    s, translator, kind = ctx.settings, ctx.translator, _kind(d)
    bar = ProgressBar(f"{d.name} midiffusion", ctx.progress)
    source = d.to_model_grid(d.source)
    mask = d.to_model_grid(d.mask.astype(np.float32)) > 0.5
    # read back through the source on the model's grid, as a translation of a volume is
    raw, result = _timed(
        d,
        lambda: d.from_model_grid(
            translator.finish(
                translator.translate_slices(
                    source,
                    preset=s.preset,
                    steps=s.steps,
                    sampler=s.sampler,
                    guidance=s.guidance,
                    samples=s.samples,
                    antithetic=s.antithetic,
                    progress=bar,
                    kind=kind,
                    **_common(s),
                ),
                source,
                mask,
                kind,
                anchor=False,
            )
        ),
    )
    bar.close()
    target = anchor_for(translator.sampling, kind)
    if target is None:
        return {"midiffusion": (raw, result)}
    # the evaluated slices span the whole brain evenly, as the anchor assumes
    before = float(raw[d.mask].mean()) if d.mask.any() else None
    anchored = MethodResult(
        seconds_per_slice=result.seconds_per_slice,
        anchor={"mean": target, "mean_before": before},
    )
    return {
        "midiffusion": (translator.anchor(raw, d.mask, kind), anchored),
        "midiffusion-unanchored": (raw, result),
    }


def _faithful(ctx: MethodContext, d: Direction) -> Rows:
    if ctx.faithful is None:
        return {"faithful": (None, MethodResult(status=NO_FAITHFUL))}
    s = ctx.settings
    bar = ProgressBar(f"{d.name} faithful", ctx.progress)
    row = _timed(
        d,
        lambda: d.from_model_grid(
            ctx.faithful.translate_slices(
                d.to_model_grid(d.source),
                steps=s.faithful_steps,
                sampler=FAITHFUL_SAMPLING.sampler,
                guidance=FAITHFUL_SAMPLING.guidance,
                samples=FAITHFUL_SAMPLING.samples,
                progress=bar,
                **_common(s),
            )
        ),
    )
    bar.close()
    return {"faithful": row}


def _sdedit(ctx: MethodContext, d: Direction) -> Rows:
    s = ctx.settings
    bar = ProgressBar(f"{d.name} sdedit", ctx.progress)
    row = _timed(
        d,
        lambda: d.from_model_grid(
            baselines.sdedit(
                ctx.translator,
                d.to_model_grid(d.source),
                t0=s.sdedit_t0,
                steps=s.sdedit_steps,
                sampler=s.sampler,
                progress=bar,
                kind=_kind(d),
                **_common(s),
            )
        ),
    )
    bar.close()
    return {"sdedit": row}


def _histogram(ctx: MethodContext, d: Direction) -> Rows:
    prior = ctx.prior
    assert prior is not None
    plain = _timed(d, lambda: baselines.histogram_map(d.source, d.mask, prior))
    inverted = _timed(d, lambda: baselines.histogram_map(d.source, d.mask, prior, invert=True))
    best, chose = baselines.histogram_best(plain[0], inverted[0], d.source, d.mask)
    picked = MethodResult(inverted_slices=int(chose.sum()), chose_inverted=chose.tolist())
    return {"histogram": plain, "histogram-inverted": inverted, "histogram-best": (best, picked)}


def _identity(ctx: MethodContext, d: Direction) -> Rows:
    return {"identity": _timed(d, lambda: baselines.identity(d.source))}


METHODS: dict[str, Method] = {
    "midiffusion": Method(
        _midiffusion, ("midiffusion", "midiffusion-unanchored"), stochastic=True, needs_model=True
    ),
    "faithful": Method(_faithful, ("faithful",), stochastic=True),
    "sdedit": Method(_sdedit, ("sdedit",), stochastic=True, needs_model=True),
    "histogram": Method(
        _histogram, ("histogram", "histogram-inverted", "histogram-best"), needs_prior=True
    ),
    "identity": Method(_identity, ("identity",)),
}
METHOD_GROUPS = tuple(METHODS)
# every row of the tables, in order
ROWS = tuple(row for method in METHODS.values() for row in method.rows)
STOCHASTIC = tuple(name for name, method in METHODS.items() if method.stochastic)
