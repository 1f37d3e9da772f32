"""``midiffusion translate INPUT -m MODEL -o OUTPUT``: one image through a stored model.

Inputs and outputs: NIfTI (.nii, .nii.gz; 3D volumes or 2D slices, geometry kept) and PNG (a 2D
greyscale slice). A DICOM series comes in as a folder of its instances or a zip of them (checked
by the same rules as the service's, ``jobs.dicom_intake``); its output is a derived series (a
``.zip`` of instances, or a folder for any other name) or a NIfTI.

A PNG input is a slice as a viewer shows it (``PNG_AFFINE``: anterior up, the
patient's right on the right); a PNG output needs a single-slice result. Intensities are
normalised as ``Translator.translate`` does.

``--mode`` picks the conditioning family: ``clean`` (the project's LMI; the default) or
``faithful`` (the published LMI and 1000-step DDPM chain, which needs a model trained with
faithful LMI). A model only runs in the mode it was trained for: the network learnt one kind of
LMI map, and feeding it the other would be a silent mismatch.

Every failure is one ``error: ...`` line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from midiffusion.io.imaging import NIFTI_SUFFIXES, ImageFormatError
from midiffusion.pipeline.devices import DEVICE_HELP, resolve_device
from midiffusion.pipeline.precision import PRECISION_HELP, PRECISIONS
from model_store.card import (
    DEFAULT_PRESET,
    FAITHFUL_SAMPLING,
    INPUT_KINDS,
    PRESET_NAMES,
    SAMPLER_NAMES,
)

PNG_SUFFIX = ".png"
# A PNG is a slice as a viewer shows it: anterior at the top, the patient's right on the right.
# Rows run posterior-ward, columns right-ward (1 mm pixels); the output PNG keeps that layout.
PNG_AFFINE = np.array([[0.0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
ANCHOR_CHOICES = {"auto": True, "on": True, "off": False}  # auto: where the card has one


class TranslateCLIError(ValueError):
    """A usage problem the command can explain in one line."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        type=Path,
        help="a .nii/.nii.gz volume or slice, a .png slice, or a DICOM series (folder or .zip)",
    )
    parser.add_argument(
        "-m", "--model", help="model name (default: the store's default model for the mode)"
    )
    parser.add_argument(
        "--version", type=int, help="model version (default: the aliased one, else the latest)"
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output .nii, .nii.gz or .png; for a DICOM input also .zip or a folder (the "
        "derived series)",
    )
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default=DEFAULT_PRESET,
        help="the card's sampling defaults, or its fast preset (fewer network passes for a "
        "stated loss of quality, MODEL_CARD.md); --steps etc. override either",
    )
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model card's)")
    parser.add_argument(
        "--sampler", choices=SAMPLER_NAMES, help="sampler (default: the model card's)"
    )
    parser.add_argument("--guidance", type=float, help="LMI guidance weight (default: card's)")
    parser.add_argument(
        "--samples", type=int, help="average this many translations (default: the card's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the noise")
    parser.add_argument(
        "--anchor",
        choices=tuple(ANCHOR_CHOICES),
        default="auto",
        help="shift the foreground's mean intensity to the model's training data (the card's "
        "anchor_mean), slices and volumes alike; auto: where the card has an anchor, on: "
        "refuse a card without one",
    )
    parser.add_argument(
        "--anatomy",
        choices=("auto", *INPUT_KINDS),
        default="auto",
        help="what the input shows: a skull-stripped brain or a whole head; auto: a head when "
        "its largest axial section exceeds 220 cm^2 (a lone section from the top of a head is "
        "judged a brain: say head)",
    )
    parser.add_argument(
        "--no-lookup",
        action="store_true",
        help="keep the sampled translation as it is, instead of reading it back through the "
        "source with the card's lookup and guided-filter weights (MODEL_CARD.md)",
    )
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
    )
    parser.add_argument(
        "--batch-size", type=int, help="slices per sampling batch (default: 32 on a GPU, else 8)"
    )
    parser.add_argument(
        "--mode",
        choices=("clean", "faithful"),
        default="clean",
        help="clean LMI (default) or the published faithful LMI + DDPM (faithful-trained model)",
    )
    parser.add_argument(
        "--store",
        type=Path,
        help="model store root (default: $MIDIFF_MODEL_DIR or the shipped model_store/models)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def said_anatomy(choice: str) -> str | None:
    """``--anatomy``'s choice as the translation takes it (None: judged from the input)."""
    return None if choice == "auto" else choice


def _kind(path: Path, role: str) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(PNG_SUFFIX):
        return "png"
    if role == "input" and (path.is_dir() or name.endswith(".zip")):
        return "dicom"
    if role == "output" and (name.endswith(".zip") or path.is_dir() or "." not in name):
        return "dicom"
    raise TranslateCLIError(
        f"{role} {path}: unknown file type; accepted: .nii, .nii.gz, .png, or a DICOM series "
        "(a folder or a .zip)"
    )


def _load_dicom(path: Path):
    """(layout, image) of a DICOM series in a folder or a zip (the service's intake rules)."""
    from jobs.dicom_archive import folder_entries, zip_entries
    from jobs.dicom_intake import DicomRejected, plan_upload
    from midiffusion.io.dicom_series import read_volume

    if not path.exists():
        raise ImageFormatError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            layout = plan_upload(folder_entries(path), keep_bytes=True)
        else:
            with open(path, "rb") as fh:
                layout = plan_upload(zip_entries(fh), keep_bytes=True)
    except DicomRejected as exc:
        raise TranslateCLIError(f"{path}: {exc}") from exc
    return layout, read_volume(layout)


def _save_dicom(layout, result, card, args: argparse.Namespace) -> Path:
    import zipfile

    from midiffusion.io.dicom_series import Derivation, derived_series, volume01
    from model_store.files import atomic_path

    derivation = Derivation(
        card.name,
        card.version,
        card.target_modality,
        preset=args.preset,
        steps=args.steps,
        seed=args.seed,
        anatomy=said_anatomy(args.anatomy),
    )
    instances = derived_series(layout, volume01(result), derivation)
    out = Path(args.output)
    if out.name.lower().endswith(".zip"):
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for n, (_, blob) in enumerate(instances, 1):
                zf.writestr(f"{n:05d}.dcm", blob)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for n, (_, blob) in enumerate(instances, 1):
        with atomic_path(out / f"{n:05d}.dcm") as tmp:
            tmp.write_bytes(blob)
    return out


def _load_input(path: Path) -> nib.Nifti1Image:
    from midiffusion.io.imaging import load_nifti, load_png

    if _kind(path, "input") == "nifti":
        return load_nifti(path)
    if not path.is_file():
        raise ImageFormatError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageFormatError(f"{path}: the file is empty; expected a PNG image")
    return nib.Nifti1Image(load_png(path), PNG_AFFINE)


def choose_model(store, name: str | None, version: int | None, mode: str):
    """The verified model to run in ``mode``; a clear error when none fits."""
    if name is None:
        if mode == "clean":
            name = store.default_name()
        else:
            faithful = [c.name for c in store.list() if c.lmi_mode() == "faithful"]
            if not faithful:
                known = ", ".join(f"{c.name} ({c.lmi_mode()})" for c in store.list()) or "none"
                raise TranslateCLIError(
                    "--mode faithful needs a model trained with faithful LMI; the store holds "
                    f"none (models: {known})"
                )
            name = faithful[-1]
    verified = store.verified(name, version)
    trained = verified.card.lmi_mode()
    if trained != mode:
        raise TranslateCLIError(
            f"model {name!r} was trained with {trained} LMI and runs only in --mode {trained}; "
            f"asked for --mode {mode}"
        )
    return verified


def translate_file(args: argparse.Namespace) -> Path:
    # File problems are reported before torch and the model are loaded (seconds on a CPU).
    if args.mode == "faithful" and args.preset != DEFAULT_PRESET:
        raise TranslateCLIError(
            f"--preset {args.preset} is for clean mode: faithful mode always runs the published "
            "1000-step chain"
        )
    out_kind = _kind(args.output, "output")
    layout = None
    if _kind(args.input, "input") == "dicom":
        layout, image = _load_dicom(args.input)
    elif out_kind == "dicom":
        raise TranslateCLIError(
            f"output {args.output}: a derived DICOM series needs a DICOM input (its patient, "
            "study and geometry are copied); write .nii, .nii.gz or .png"
        )
    else:
        image = _load_input(args.input)
    if out_kind == "png" and len([s for s in image.shape if s > 1]) > 2:
        raise TranslateCLIError(
            f"{args.input} is a volume of shape {image.shape}: a PNG output holds one slice; "
            "write .nii or .nii.gz instead"
        )

    device = resolve_device(args.device)  # before the model: a wrong name should not wait on it

    from tqdm import tqdm

    from midiffusion.io.imaging import save_nifti, save_png
    from midiffusion.pipeline.translate import Translator
    from model_store import ModelStore

    verified = choose_model(ModelStore(args.store), args.model, args.version, args.mode)
    card = verified.card
    if args.anchor == "on" and card.sampling.anchor_mean is None:
        raise TranslateCLIError(
            f"model {card.name!r} v{card.version} has no intensity anchor in its card "
            "(sampling.anchor_mean): use --anchor auto or off, or a version published with one"
        )
    translator = Translator.load(card, verified.weights_path, device, args.precision)
    # faithful mode runs the published chain; clean mode leaves what is not given to the card
    defaults = FAITHFUL_SAMPLING.model_dump() if args.mode == "faithful" else {}
    with tqdm(
        desc=f"translating with {card.name} v{card.version}",
        unit="step",
        disable=args.quiet,
        file=sys.stderr,
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        result = translator.translate(
            image,
            preset=args.preset,
            steps=args.steps or defaults.get("steps"),
            seed=args.seed,
            sampler=args.sampler or defaults.get("sampler"),
            guidance=args.guidance if args.guidance is not None else defaults.get("guidance"),
            samples=args.samples or defaults.get("samples"),
            batch_size=args.batch_size,
            anchor=ANCHOR_CHOICES[args.anchor],
            lookup=not args.no_lookup,
            kind=said_anatomy(args.anatomy),
            progress=progress,
            warn=lambda message: bar.write(f"warning: {message}", file=sys.stderr),
        )
    if out_kind == "dicom":
        return _save_dicom(layout, result, card, args)
    if out_kind == "png":
        return save_png(np.asarray(result.dataobj, np.float32).squeeze(), args.output)
    return save_nifti(result, args.output)


def run(args: argparse.Namespace) -> int:
    from midiffusion.pipeline.translate import TranslationCancelled, TranslationInputError
    from model_store import ModelIntegrityError, ModelNotFoundError

    try:
        path = translate_file(args)
    except (
        TranslateCLIError,
        ImageFormatError,
        TranslationInputError,
        TranslationCancelled,
        ModelNotFoundError,
        ModelIntegrityError,
        ValueError,
    ) as exc:
        print(f"error: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    print(path)
    return 0
