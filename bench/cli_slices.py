"""What one more slice costs through the command line: ``midiffusion translate`` with the card's
defaults on a 3- and an 11-slice 128 x 128 volume, the difference over 8 slices, also in
convolution units.

    python bench/cli_slices.py [--repeats 2] [--model t1w] [--version N]

The volumes are mni-synth T2w slices 18 onwards. Each command runs as a user runs it, in its own
process (start-up and model loading cancel in the difference). The convolution unit
(``translate.py``'s) is timed in its own plain process before and after, so the figure is
comparable with a check that times the same workload beside the command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.data.sets import load_volumes

SLICES = (3, 11)
UNIT = "from translate import convolution_unit; print(convolution_unit())"


def unit_seconds() -> float:
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", UNIT], cwd=here, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--version", type=int, default=None)
    args = parser.parse_args()
    cli = [str(Path(sys.executable).parent / "midiffusion"), "translate", "--quiet"]
    cli += ["-m", args.model] if args.model else []
    cli += ["--version", str(args.version)] if args.version else []
    t2w = load_volumes("mni-synth")["t2w"]
    data = np.asarray(t2w.dataobj, np.float32)
    units = [unit_seconds()]
    seconds: dict[int, list[float]] = {n: [] for n in SLICES}
    with tempfile.TemporaryDirectory() as tmp:
        for n in SLICES:
            nib.save(nib.Nifti1Image(data[:, :, 18 : 18 + n], t2w.affine), f"{tmp}/v{n}.nii.gz")
        for _ in range(args.repeats):
            for n in SLICES:
                started = time.perf_counter()
                command = [*cli, f"{tmp}/v{n}.nii.gz", "-o", f"{tmp}/o{n}.nii.gz"]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                seconds[n].append(time.perf_counter() - started)
    units.append(unit_seconds())
    extra = [(b - a) / (SLICES[1] - SLICES[0]) for a, b in zip(*seconds.values(), strict=True)]
    for n, s in seconds.items():
        print(f"{n} slices: " + " / ".join(f"{v:.2f} s" for v in s))
    print(f"convolution unit before / after: {units[0]:.3f} / {units[1]:.3f} s")
    print(
        f"per extra slice: {min(extra):.2f}-{max(extra):.2f} s = "
        f"{min(extra) / max(units):.1f}-{max(extra) / min(units):.1f} units"
    )


if __name__ == "__main__":
    main()
