"""The benchmark run end to end on small real data: every method, every direction, its files.

mni-synth, head-synth and head-synth-256 are built for real from the nilearn MNI152 files and
pydeface's mean head on the tiny model's 32 x 32 grid (64 x 64 for head-synth-256);
ct-real and t1-train are small synthetic sets written with the data module's own writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from midiffusion.cli.main import main
from midiffusion.data.build import build_set, write_set
from midiffusion.data.recipe import Recipe
from midiffusion.data.sources import fetch_source, source_by_name
from midiffusion.data.volumes import BuiltSet, Volume
from midiffusion.evaluation.methods import NO_FAITHFUL, ROWS
from midiffusion.evaluation.results import EvaluationResults
from midiffusion.evaluation.runner import EvalSettings, evaluate

GRID = 32


def _ellipsoid(grid: int, n: int, value: float, core: float) -> tuple[np.ndarray, np.ndarray]:
    """Ellipses with a core of another intensity and a smooth gradient (a continuous histogram)."""
    yy, xx = np.mgrid[:grid, :grid] / grid - 0.5
    vol, mask = np.zeros((grid, grid, n), np.float32), np.zeros((grid, grid, n), np.uint8)
    for k in range(n):
        r = 0.3 + 0.02 * k
        inside = (yy / r) ** 2 + (xx / (0.8 * r)) ** 2 < 1
        inner = (yy / (r / 2)) ** 2 + (xx / (r / 3)) ** 2 < 1
        vol[:, :, k] = inside * (value + 0.3 * yy) + inner * (core - value)
        mask[:, :, k] = inside
    return vol, mask


def _write(root: Path, name: str, kind: str, volumes: list[Volume]) -> None:
    out = root / "sets" / name
    out.mkdir(parents=True)
    write_set(out, name, BuiltSet(kind, volumes, []), Recipe(grid=GRID))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    for name, source in (
        ("mni-synth", "mni152"),
        ("head-synth", "pydeface-mean"),
        ("head-synth-256", "pydeface-mean"),  # twice the model's grid
    ):
        fetch_source(root, source_by_name(source))
        build_set(name, root, Recipe(grid=GRID, synth_slices=3), log=lambda _m: None)
    affine = np.diag([4.0, 4.0, 2.0, 1.0])
    ct, ct_mask = _ellipsoid(GRID, 3, 0.5, 0.1)  # CT: dark ventricles, mid-grey tissue
    _write(
        root,
        "ct-real",
        "evaluation",
        [
            Volume("ct", "image", "CT", ct, affine, "synthetic"),
            Volume("mask", "mask", "mask", ct_mask, affine, "synthetic"),
        ],
    )
    t1, _ = _ellipsoid(GRID, 4, 0.8, 0.2)
    _write(root, "t1-train", "training", [Volume("t1", "image", "T1w", t1, affine, "synthetic")])
    return root


@pytest.fixture(scope="module")
def run(tiny_model_store, data_root, tmp_path_factory) -> tuple[EvaluationResults, Path]:
    out = tmp_path_factory.mktemp("evalout")
    settings = EvalSettings(model="tiny", slices=2, steps=3, sdedit_t0=400, fid=False)
    results = evaluate(
        settings, out, store=tiny_model_store, data_root=data_root, progress=False, log=print
    )
    return results, out


def test_every_method_and_direction_is_reported(run) -> None:
    _, out = run
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["directions"]) == [
        "T2w->T1",
        "PDw->T1",
        "FLAIR->T1",
        "CT->T1",
        "head T2w->T1",
        "head PDw->T1",
        "head FLAIR->T1",
        "head T2w->T1 @256",
        "head PDw->T1 @256",
        "head FLAIR->T1 @256",
    ]
    assert saved["model"]["name"] == "tiny" and saved["settings"]["seed"] == 0
    for name, entry in saved["directions"].items():
        assert list(entry["methods"]) == list(ROWS)
        assert entry["n"] == 2 and len(entry["slices"]) == 2
        assert entry["methods"]["faithful"] == {"status": NO_FAITHFUL}
        for method, row in entry["methods"].items():
            if method == "faithful":
                continue
            assert row["status"] == "ok"
            summary = row["summary"]
            expected = {"ssim_src", "nmi_src"}
            if name != "CT->T1":
                expected |= {"ssim_tar", "psnr", "mse", "nmi_tar"}
            assert set(summary) == expected
            assert all(s["n"] == 2 and np.isfinite(s["mean"]) for s in summary.values())
            assert len(row["per_slice"]) == 2 and row["fid"] is None
            assert np.isfinite(row["consistency"]["adjacent_mad"])
            if name != "CT->T1":  # reformats need a ground truth
                tp = row["through_plane"]
                assert set(tp["reformat_ssim"]) == {"sagittal", "coronal"}
                assert np.isfinite(tp["gradient_energy_ratio"])
            else:
                assert "through_plane" not in row
    # the identity's SSIM to its own source is 1; its NMI to the source is 1
    ident = saved["directions"]["T2w->T1"]["methods"]["identity"]["summary"]
    assert ident["ssim_src"]["mean"] == pytest.approx(1.0)
    assert ident["nmi_src"]["mean"] == pytest.approx(1.0)


def test_baselines_behave_as_defined(run, data_root) -> None:
    results, out = run
    assert json.loads((out / "results.json").read_text()) == json.loads(results.to_json())
    flair = results.directions["FLAIR->T1"].methods
    # histogram-best is, per slice, one of the two candidates
    chose = np.array(flair["histogram-best"].chose_inverted)
    assert flair["histogram-best"].inverted_slices == chose.sum()
    for k, inv in enumerate(chose):
        src = flair["histogram-inverted" if inv else "histogram"].per_slice[k]
        assert flair["histogram-best"].per_slice[k] == src
    # a rank map keeps the source's structure: NMI to the source stays high
    assert flair["histogram"].summary["nmi_src"]["mean"] > 0.5
    # the default method is the anchored one: same samples, volume mean moved to the card's
    anchored = flair["midiffusion"]
    assert anchored.anchor["mean"] == results.model.sampling["anchor_mean"]
    assert anchored.anchor["mean_before"] != pytest.approx(anchored.anchor["mean"])
    assert anchored.per_slice != flair["midiffusion-unanchored"].per_slice
    # ground-truth consistency is a property of the slices, shared by all methods
    gts = {r.consistency.ground_truth_adjacent_mad for r in flair.values() if r.ok}
    assert len(gts) == 1
    ct = results.directions["CT->T1"].methods["midiffusion"]
    assert ct.consistency.ratio_to_ground_truth is None


def test_markdown_table_and_figures(run) -> None:
    results, out = run
    table = (out / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    metric_rows = [r for r in rows if r.count("|") == 12 and "direction" not in r]
    assert len(metric_rows) == 10 * len(ROWS)
    assert any("FLAIR->T1 | midiffusion | 2 | " in r and " ± " in r for r in metric_rows)
    assert any("faithful" in r and "not run" in r for r in metric_rows)
    assert "FID" in table and "noisy" in table
    assert all((p.stat().st_mode & 0o777) == 0o644 for p in out.iterdir())
    for direction, name in results.figures.items():
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 4 * im.height / 2  # a wide grid
        assert direction.replace("->", "_to_").replace(" ", "_") in name


def test_same_seed_same_results_and_fid_when_enabled(run, tiny_model_store, data_root, tmp_path):
    first, _ = run
    settings = EvalSettings(
        model="tiny",
        slices=2,
        steps=3,
        sdedit_t0=400,
        directions=["FLAIR->T1"],
        methods=["midiffusion", "sdedit", "histogram"],
        fid=True,
    )
    again = evaluate(
        settings,
        tmp_path,
        store=tiny_model_store,
        data_root=data_root,
        progress=False,
        log=lambda _m: None,
    )
    rows_a = first.directions["FLAIR->T1"].methods
    rows_b = again.directions["FLAIR->T1"].methods
    for method in ("midiffusion", "sdedit", "histogram", "histogram-inverted"):
        assert rows_b[method].per_slice == rows_a[method].per_slice
    fids = {m: rows_b[m].fid for m in rows_b}
    assert all(f is not None and f >= 0 for f in fids.values())
    chose = np.array(rows_b["histogram-best"].chose_inverted)
    if chose.all() or not chose.any():  # best == one candidate entirely: same FID
        other = "histogram-inverted" if chose.all() else "histogram"
        assert fids["histogram-best"] == pytest.approx(fids[other])


def test_cli_errors_are_one_line(tiny_model_store, data_root, tmp_path, capsys) -> None:
    base = ["evaluate", "--store", str(tiny_model_store.root), "--data-dir", str(data_root)]
    assert main([*base, "-m", "nope", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown model 'nope'" in err and "tiny" in err
    empty = tmp_path / "nodata"
    assert main([*base[:3], "--data-dir", str(empty), "-m", "tiny", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "not built" in err and "midiffusion data build" in err
    assert not (tmp_path / "results.json").exists()


def test_baselines_only_run_needs_no_model(data_root, tmp_path, capsys) -> None:
    args = ["evaluate", "--store", str(tmp_path / "nostore"), "--data-dir", str(data_root)]
    args += ["--methods", "histogram", "identity", "--no-fid", "--slices", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["model"] is None
    assert list(saved["directions"]["CT->T1"]["methods"]) == [
        "histogram",
        "histogram-inverted",
        "histogram-best",
        "identity",
    ]
    assert "baselines only" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["directions"] == {}


def test_more_seeds_rerun_the_stochastic_methods(tiny_model_store, data_root, tmp_path) -> None:
    args = ["evaluate", "--store", str(tiny_model_store.root), "--data-dir", str(data_root)]
    args += ["-m", "tiny", "--directions", "T2w->T1", "--slices", "2", "--steps", "3"]
    args += ["--methods", "midiffusion", "histogram", "--no-fid", "--quiet"]
    assert main([*args, "--more-seeds", "1", "2", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "results.json").read_text())["directions"]["T2w->T1"]
    spread = entry["seeds"]
    assert set(spread) == {"midiffusion", "midiffusion-unanchored"}  # not the histogram maps
    for method, runs in spread.items():
        assert [r["seed"] for r in runs] == [0, 1, 2]
        main_summary = entry["methods"][method]["summary"]
        assert runs[0]["psnr"] == pytest.approx(main_summary["psnr"]["mean"])
        assert len({r["ssim_tar"] for r in runs}) == 3  # other noise, other volume
    table = (tmp_path / "results.md").read_text()
    assert "Across seeds" in table and "| T2w->T1 | midiffusion | PSNR | 0: " in table
    # the card's part: the default method only, with its seed spread
    card = json.loads((tmp_path / "metrics.json").read_text())
    assert list(card["directions"]) == ["T2w->T1"] and "seeds 0, 1, 2" in card["note"]
    assert (
        card["directions"]["T2w->T1"]["midiffusion"] == entry["methods"]["midiffusion"]["summary"]
    )
    assert card["directions"]["T2w->T1"]["seeds"] == spread


def test_antithetic_switch_overrides_the_card(tiny_model_store, data_root, tmp_path) -> None:
    args = ["evaluate", "--store", str(tiny_model_store.root), "--data-dir", str(data_root)]
    args += ["-m", "tiny", "--directions", "T2w->T1", "--slices", "2", "--steps", "3"]
    args += ["--methods", "midiffusion", "--no-fid", "--quiet", "--samples", "2"]
    runs = {}
    for switch in ("on", "off"):
        assert main([*args, "--antithetic", switch, "--out", str(tmp_path / switch)]) == 0
        runs[switch] = json.loads((tmp_path / switch / "results.json").read_text())
    psnr = {
        k: r["directions"]["T2w->T1"]["methods"]["midiffusion"]["summary"]["psnr"]["mean"]
        for k, r in runs.items()
    }
    assert psnr["on"] != psnr["off"]  # the second draw ran on other noise
    assert runs["on"]["settings"]["antithetic"] is True
    assert "mean of 2 samples in antithetic pairs" in (tmp_path / "on" / "results.md").read_text()
    assert "antithetic" not in (tmp_path / "off" / "results.md").read_text()


def test_a_finer_set_is_translated_at_the_model_grid_and_scored_at_its_own(
    tiny_model_store, data_root
) -> None:
    from midiffusion.evaluation.directions import load_directions
    from midiffusion.evaluation.methods import METHODS, MethodContext
    from midiffusion.pipeline.intensity import input_kind
    from midiffusion.pipeline.translate import Translator

    fine, coarse = load_directions(["head T2w->T1 @256", "head T2w->T1"], 2, data_root, GRID)
    assert fine.source.shape[1:] == (2 * GRID, 2 * GRID) and fine.factor == 2
    assert coarse.source.shape[1:] == (GRID, GRID) and coarse.factor == 1
    # the same head: averaging the fine slices gives the coarse set's grid, close to its slices
    assert np.abs(fine.to_model_grid(fine.truth) - coarse.truth).mean() < 0.05
    v = tiny_model_store.verified("tiny")
    settings = EvalSettings(model="tiny", slices=2, steps=2, fid=False)
    ctx = MethodContext(settings, Translator.load(v.card, v.weights_path), None, None, False)
    rows = METHODS["midiffusion"].run(ctx, fine)
    out = rows["midiffusion-unanchored"][0]
    assert out.shape == fine.source.shape
    assert not out[~fine.mask].any() and np.isfinite(out).all()
    # scored at the fine grid: the output is the model-grid translation (read back through the
    # source there, as a volume is), brought back up
    source = fine.to_model_grid(fine.source)
    mask = fine.to_model_grid(fine.mask.astype(np.float32)) > 0.5
    sampled = ctx.translator.translate_slices(source, steps=2, seed=0)
    kind = input_kind(fine.mask, fine.pixel_mm2)
    at_model = ctx.translator.finish(sampled, source, mask, kind, anchor=False)
    np.testing.assert_allclose(out, fine.from_model_grid(at_model) * fine.mask, atol=1e-6)


def test_single_slices_are_translated_alone_and_scored(tiny_model_store, data_root, tmp_path):
    args = ["evaluate", "--store", str(tiny_model_store.root), "--data-dir", str(data_root)]
    args += ["-m", "tiny", "--single-slices", "--slices", "2", "--steps", "2", "--quiet"]
    assert (
        main([*args, "--protocol", "head-synth", "--more-seeds", "1", "--out", str(tmp_path)]) == 0
    )
    rows = [r for r in (tmp_path / "single-slices.md").read_text().splitlines() if "->T1 |" in r]
    assert len(rows) == 6  # three directions at two seeds
    assert {r.split("|")[2].strip() for r in rows} == {"0", "1"}
    assert all(r.split("|")[3].strip() == "2" for r in rows)  # slices per direction
    assert not (tmp_path / "results.json").exists()  # the benchmark itself did not run
    assert main([*args, "--protocol", "ct-real", "--out", str(tmp_path / "ct")]) == 1  # no truth
    # said to show heads, the slices take the card's anchor for heads (none: the tiny card has
    # only a brain's): other scores, and the table says how they were translated
    said = tmp_path / "said"
    assert main([*args, "--protocol", "head-synth", "--anatomy", "head", "--out", str(said)]) == 0
    table = (said / "single-slices.md").read_text()
    assert "--anatomy head" in table
    ssim = [[r.split("|")[4] for r in rs if "->T1 |" in r] for rs in (rows[:3], table.splitlines())]
    assert ssim[0] != ssim[1]
    # a volume's kind is judged, never said
    plain = ["evaluate", "--store", str(tiny_model_store.root), "--data-dir", str(data_root)]
    assert main([*plain, "-m", "tiny", "--anatomy", "head", "--out", str(tmp_path / "v")]) == 1
