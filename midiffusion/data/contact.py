"""Contact sheets: a PNG grid of slices, so a person can see at a glance that a set is right.

Each row is one volume, each column an evenly spaced axial slice. Slices are shown in the
neurological view: anterior at the top, the patient's right on the viewer's right (the array
``vol[:, :, k]`` rotated 90 degrees counter-clockwise). The PNG carries no timestamp, so the
same volumes give the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_H = 14  # pixel rows for a row's label


def display(slice_xy: np.ndarray) -> np.ndarray:
    """RAS slice (axis 0 = right, axis 1 = anterior) -> image rows/cols (anterior up, R right)."""
    return np.rot90(slice_xy)


def contact_sheet_png(rows: list[tuple[str, np.ndarray]], n_cols: int = 8) -> bytes:
    """PNG bytes of a grid: one labelled row per (label, volume (X, Y, Z) in [0, 1])."""
    if not rows:
        raise ValueError("a contact sheet needs at least one volume")
    tile = rows[0][1].shape[0]
    strips = []
    for label, vol in rows:
        idx = np.linspace(0, vol.shape[2] - 1, min(n_cols, vol.shape[2])).round().astype(int)
        tiles = [display(vol[:, :, k]) for k in idx]
        tiles += [np.zeros((tile, tile), np.float32)] * (n_cols - len(tiles))
        strip = np.concatenate([t[:tile, :tile] for t in tiles], axis=1)
        head = Image.new("L", (strip.shape[1], LABEL_H), 0)
        ImageDraw.Draw(head).text((2, 1), f"{label}  (slices {', '.join(map(str, idx))})", fill=255)
        body = (np.clip(strip, 0.0, 1.0) * 255).round().astype(np.uint8)
        strips.append(np.concatenate([np.asarray(head), body], axis=0))
    sheet = np.concatenate(strips, axis=0)
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return buf.getvalue()


def write_contact_sheet(path: Path, rows: list[tuple[str, np.ndarray]], n_cols: int = 8) -> None:
    path.write_bytes(contact_sheet_png(rows, n_cols))
