"""Comparing two evaluations seed by seed, within the stated tolerance."""

from __future__ import annotations

import json
from pathlib import Path

from midiffusion.evaluation.compare import compare, compare_over_seeds, main, seed_figures


def _results(folder: Path, seed: int, directions: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(
        json.dumps({"settings": {"seed": seed}, "directions": directions})
    )
    return folder


def _with_seeds(ssim: list[float], psnr: list[float]) -> dict:
    rows = [
        {"seed": i, "ssim_tar": s, "psnr": p}
        for i, (s, p) in enumerate(zip(ssim, psnr, strict=True))
    ]
    return {"methods": {}, "seeds": {"midiffusion": rows}}


def _one_seed(**means: float) -> dict:
    summary = {k: {"mean": v, "std": 0.0, "n": 4} for k, v in means.items()}
    return {"methods": {"midiffusion": {"summary": summary}}}


def test_seeds_merge_across_folders_and_a_loss_beyond_the_tolerance_fails(tmp_path, capsys):
    old = [
        _results(tmp_path / "old", 0, {"T2w->T1": _with_seeds([0.70, 0.71], [20.0, 20.1])}),
        _results(tmp_path / "old-ct", 0, {"CT->T1": _one_seed(ssim_src=0.22, nmi_src=0.3)}),
    ]
    figures = seed_figures(old)
    assert figures[("T2w->T1", 1)] == {"ssim_tar": 0.71, "psnr": 20.1}
    assert figures[("CT->T1", 0)] == {"ssim_src": 0.22}

    # within 0.005 SSIM and 0.1 dB of the old figures, or better: holds
    near = [
        _results(tmp_path / "near", 0, {"T2w->T1": _with_seeds([0.696, 0.75], [19.95, 21.0])}),
        _results(tmp_path / "near-ct", 0, {"CT->T1": _one_seed(ssim_src=0.30)}),
    ]
    rows, holds = compare(figures, seed_figures(near))
    assert holds and len(rows) == 2 + 5  # header, 2 seeds x (SSIM, PSNR), ct-real's SSIM

    worse = [_results(tmp_path / "worse", 0, {"T2w->T1": _with_seeds([0.70, 0.70], [20.0, 19.9])})]
    rows, holds = compare(figures, seed_figures(worse))
    assert not holds
    assert [r for r in rows if "**no**" in r] == [
        "| T2w->T1 | 1 | ssim_tar | 0.710 | 0.700 | -0.010 | **no** |",
        "| T2w->T1 | 1 | psnr | 20.100 | 19.900 | -0.200 | **no** |",
    ]
    assert main(["--old", *map(str, old), "--new", str(worse[0])]) == 1
    assert "everywhere: no" in capsys.readouterr().out


def test_means_over_seeds_hold_where_one_unlucky_seed_does_not(tmp_path):
    old = seed_figures(
        [_results(tmp_path / "old", 0, {"PDw->T1": _with_seeds([0.70, 0.71], [20.0, 20.1])})]
    )
    # seed 1 loses beyond the tolerance, seed 0 gains more: the means hold
    lucky = seed_figures(
        [_results(tmp_path / "new", 0, {"PDw->T1": _with_seeds([0.72, 0.70], [20.3, 19.9])})]
    )
    assert not compare(old, lucky)[1]
    rows, holds = compare_over_seeds(old, lucky)
    assert holds
    assert rows[2:] == [
        "| PDw->T1 | 2 | ssim_tar | 0.705 (0.700-0.710) | 0.710 (0.700-0.720) | +0.005 | yes |",
        "| PDw->T1 | 2 | psnr | 20.050 (20.000-20.100) | 20.100 (19.900-20.300) | +0.050 | yes |",
    ]
    # both seeds a little lower: the mean SSIM falls 0.010, beyond the tolerance
    lower = seed_figures(
        [_results(tmp_path / "low", 0, {"PDw->T1": _with_seeds([0.69, 0.70], [20.0, 20.1])})]
    )
    rows, holds = compare_over_seeds(old, lower)
    assert not holds and "**no**" in rows[2] and rows[3].endswith("| yes |")
