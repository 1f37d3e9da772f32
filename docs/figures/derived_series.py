"""The README's derived-series figure: a T2w MR series goes through ``midiffusion translate`` as
DICOM, and the derived series it writes is shown as a viewer shows it (rescale, then the series'
own window centre and width, with the overlay a viewer prints).

    .venv/bin/python docs/figures/derived_series.py -m t1w -o docs/figures/derived-series.png

The source is head-synth's held-out head (the T2w volume of ``midiffusion data build``), 12 axial
slices written as an MR series with a made-up patient, so every step from DICOM in to DICOM out
is the command a user runs.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from midiffusion.cli.main import main as cli
from midiffusion.data.sets import data_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SLICES = 12


def source_series(path: Path) -> bytes:
    """A zip of 12 axial T2w MR instances (LPS-ordered pixels, as a scanner writes them)."""
    image = nib.load(data_dir() / "sets" / "head-synth" / "t2w.nii.gz")
    lps = image.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
    start = lps.shape[2] // 2 - SLICES // 2 + 2
    volume = np.asarray(lps.dataobj, dtype=np.float32)[:, :, start : start + SLICES]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps.affine  # RAS -> LPS
    scale = 4000.0 / float(volume.max())
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k in range(SLICES):
            ds = Dataset()
            ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Figure^Phantom", "FIG-1", ""
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", generate_uid()
            ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 2, k + 1
            ds.SeriesDescription = "T2w axial"
            position = affine @ [0, 0, start + k, 1]
            ds.ImagePositionPatient = [round(float(v), 4) for v in position[:3]]
            cols, rows = affine[:3, 0], affine[:3, 1]
            iop = [*(cols / np.linalg.norm(cols)), *(rows / np.linalg.norm(rows))]
            ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
            ds.PixelSpacing = [float(np.linalg.norm(rows)), float(np.linalg.norm(cols))]
            ds.SliceThickness = float(np.linalg.norm(affine[:3, 2]))
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            plane = np.rint(volume[:, :, k].T * scale).astype("<u2")
            ds.Rows, ds.Columns = plane.shape
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = plane.tobytes()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
                ds.SOPClassUID,
                ds.SOPInstanceUID,
            )
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            blob = io.BytesIO()
            ds.save_as(blob, enforce_file_format=True)
            archive.writestr(f"IM{k:04d}", blob.getvalue())
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def as_viewer_shows(ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT (rescale) then the VOI window (PS3.3 C.11.2.1.2 linear), in [0, 1]."""
    value = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.clip((value - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)


def render(derived: list[pydicom.Dataset], out: Path) -> None:
    derived = sorted(derived, key=lambda d: int(d.InstanceNumber))
    fig, axes = plt.subplots(3, 4, figsize=(12, 9.6), facecolor="black")
    for ax, ds in zip(axes.flat, derived, strict=True):
        ax.imshow(as_viewer_shows(ds), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        z = float(ds.ImagePositionPatient[2])
        ax.text(3, 8, f"Im {ds.InstanceNumber}  z {z:.1f} mm", color="yellow", fontsize=8)
        ax.text(
            3,
            ds.Rows - 5,
            f"W {float(ds.WindowWidth):.0f}  L {float(ds.WindowCenter):.0f}",
            color="yellow",
            fontsize=8,
        )
        ax.text(ds.Columns / 2, 8, "A", color="yellow", fontsize=8, ha="center")
        ax.text(ds.Columns - 4, ds.Rows / 2, "L", color="yellow", fontsize=8, ha="right")
    first = derived[0]
    fig.suptitle(
        f"{first.SeriesDescription}\n{' / '.join(first.ImageType)}, series {first.SeriesNumber}, "
        f"{len(derived)} instances",
        color="white",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(out, dpi=80, facecolor="black")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default="t1w")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/figures/derived-series.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "t2w-series.zip"
        source_series(source)
        derived_zip = Path(tmp) / "derived.zip"
        code = cli(["translate", str(source), "-m", args.model, "-o", str(derived_zip), "--quiet"])
        if code != 0:
            raise SystemExit(code)
        with zipfile.ZipFile(derived_zip) as archive:
            derived = [pydicom.dcmread(io.BytesIO(archive.read(n))) for n in archive.namelist()]
    render(derived, args.out)
    print(args.out)


if __name__ == "__main__":
    run()
