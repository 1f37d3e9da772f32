"""Draw the Grafana dashboard's panels (deploy/grafana/dashboards/midiffusion.json) with
matplotlib, from the live Prometheus data that the telemetry test stores.

Grafana is not in the registries this project installs from, so this is how the README shows
the dashboard. Every line is a dashboard query, run by a real Prometheus against the gateway and
worker of a test run (tiny test model, small volumes, this CPU): the shapes are real, the
figures are not production's.

    MIDIFF_DASHBOARD_DATA=out/dashboard.json MIDIFF_DASHBOARD_JOBS=30 \\
        .venv/bin/python -m pytest tests/test_telemetry_live.py
    .venv/bin/python docs/figures/dashboard.py out/dashboard.json -o docs/figures/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[2]
UNITS = {"s": "seconds", "bytes": "bytes", "percentunit": "fraction", "none": ""}


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template) or "value"


def panel_units() -> dict[str, str]:
    board = json.loads((REPO / "deploy/grafana/dashboards/midiffusion.json").read_text())
    return {p["title"]: p["fieldConfig"]["defaults"].get("unit", "none") for p in board["panels"]}


def draw(data: dict[str, Any], out: Path) -> None:
    units = panel_units()
    titles = list(dict.fromkeys(p["title"] for p in data["panels"]))
    cols = 3
    rows = math.ceil(len(titles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.9 * rows), squeeze=False)
    start = min(  # the first scrape: the x axis counts from there
        float(t)
        for p in data["panels"]
        for series in p["data"]["result"]
        for t, _ in series["values"]
    )
    for ax, title in zip(axes.flat, titles, strict=False):
        for target in (p for p in data["panels"] if p["title"] == title):
            for series in target["data"]["result"]:
                points = [
                    (float(t) - start, float(v))
                    for t, v in series["values"]
                    if not math.isnan(float(v))
                ]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, lw=1.4, label=legend(target["legend"], series["metric"]))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds since the first scrape", fontsize=8)
        ax.set_ylabel(UNITS.get(units.get(title, "none"), ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2, loc="best")
    for ax in list(axes.flat)[len(titles) :]:
        ax.axis("off")
    fig.suptitle(
        "MIDiffusion dashboard, drawn from live Prometheus data of a test run "
        "(tiny test model, 32x32x3 volumes, 2-core CPU): not production figures",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the JSON the telemetry test stored")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "docs/figures/dashboard.png")
    args = parser.parse_args()
    draw(json.loads(args.data.read_text()), args.out)


if __name__ == "__main__":
    main()
