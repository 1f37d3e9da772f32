"""``midiffusion demo``: what the project does today, on registry-shipped data.

1. Builds the ``mni-synth`` evaluation set if needed (MNI152 from the nilearn wheel, with T2w, PDw
   and FLAIR sources synthesised from its tissue maps).
2. Shows LMI at work on one real slice: the self-LMI maps of different contrasts of the same
   anatomy look alike (that is the zero-shot property), written as ``lmi_maps.png``.
3. If the model store holds a model, translates a few slices of every synthetic source to T1 with
   it, prints SSIM/PSNR against the real MNI152 T1 next to the identity baseline, and writes
   ``translation.png`` (source | translation | ground truth).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from midiffusion.cli.main import main as cli_main
from midiffusion.evaluation import metrics

SOURCES = ("t2w", "pdw", "flair")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--out", type=Path, default=Path("out/demo"), help="output folder")
    parser.add_argument("--slices", type=int, default=4, help="slices per source to translate")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the model card's)")
    parser.add_argument("-m", "--model", help="model name (default: the store's default)")


def _ensure_mni_synth():
    from midiffusion.data.sets import load_volumes

    try:
        return load_volumes("mni-synth")
    except FileNotFoundError:
        print("== building the mni-synth evaluation set (first run only)")
        if cli_main(["data", "fetch", "--sources", "mni152"]) != 0:
            raise SystemExit("demo: could not fetch MNI152 from the nilearn wheel") from None
        if cli_main(["data", "build", "--sets", "mni-synth"]) != 0:
            raise SystemExit("demo: could not build mni-synth") from None
        return load_volumes("mni-synth")


def _show(ax, img: np.ndarray, title: str, vmax: float = 1.0) -> None:
    ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=vmax)  # anterior up
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def lmi_figure(vols: dict, k: int, path: Path) -> dict[str, float]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from midiffusion.lmi import LMISettings, local_mutual_information

    settings = LMISettings(bandwidth="auto").to_dict()
    names = ("t1", *SOURCES)
    imgs = {n: np.array(vols[n].dataobj[:, :, k], np.float32) for n in names}
    mask = np.asarray(vols["mask"].dataobj[:, :, k]) > 0
    t = {n: torch.from_numpy(v)[None, None] for n, v in imgs.items()}
    self_maps = {
        n: local_mutual_information(t[n], t[n], **settings).similarity[0, 0].numpy() for n in names
    }
    fig, axes = plt.subplots(2, len(names), figsize=(2.4 * len(names), 5.6), dpi=110)
    for j, n in enumerate(names):
        _show(axes[0, j], imgs[n], f"{n.upper()} (slice {k})")
        _show(axes[1, j], self_maps[n], f"self-LMI of {n.upper()}")
    fig.suptitle("Different contrasts, one anatomy: their LMI maps agree", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {n: float(np.corrcoef(self_maps[n][mask], self_maps["t1"][mask])[0, 1]) for n in SOURCES}


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    vols = _ensure_mni_synth()
    n = vols["t1"].shape[2]
    k = n // 2
    corr = lmi_figure(vols, k, args.out / "lmi_maps.png")
    print(f"LMI maps of slice {k} of mni-synth: {args.out / 'lmi_maps.png'}")
    for name, c in corr.items():
        print(f"  correlation of self-LMI({name.upper()}) with self-LMI(T1) in the brain: {c:.3f}")

    from model_store import ModelNotFoundError, ModelStore

    store = ModelStore()
    try:
        name = args.model or store.default_name()
    except ModelNotFoundError:
        print(
            "No trained model is in the model store yet: translation skipped. "
            "Train one with `midiffusion train` and publish it with `midiffusion models publish`."
        )
        return 0
    translate_demo(store, name, vols, args)
    return 0


def translate_demo(store, name: str, vols: dict, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from midiffusion.pipeline.translate import Translator

    verified = store.verified(name)
    card = verified.card
    translator = Translator.load(card, verified.weights_path)
    n = vols["t1"].shape[2]
    idx = np.linspace(n * 0.25, n * 0.75, args.slices).round().astype(int)
    truth = np.stack([np.asarray(vols["t1"].dataobj[:, :, i], np.float32) for i in idx])
    mask = np.stack([np.asarray(vols["mask"].dataobj[:, :, i]) > 0 for i in idx])
    print(
        f"== translating {len(idx)} slices of each source with {card.name} v{card.version} "
        f"({card.training.get('iterations')} training iterations)"
    )
    fig, axes = plt.subplots(len(SOURCES), 3, figsize=(7.2, 2.5 * len(SOURCES)), dpi=110)
    print(
        f"{'direction':<12}{'SSIM(tar)':>10}{'PSNR':>8}   identity: {'SSIM':>6}{'PSNR':>7}"
        f"{'s/slice':>9}"
    )
    for row, src_name in enumerate(SOURCES):
        src = np.stack([np.asarray(vols[src_name].dataobj[:, :, i], np.float32) for i in idx])
        start = time.perf_counter()
        out = translator.translate_slices(src, steps=args.steps, seed=0) * mask
        per_slice = (time.perf_counter() - start) / len(idx)
        ours = [
            metrics.slice_metrics(o, s, t, m)
            for o, s, t, m in zip(out, src, truth, mask, strict=True)
        ]
        ident = [
            metrics.slice_metrics(s, s, t, m) for s, t, m in zip(src, truth, mask, strict=True)
        ]
        mo, mi = metrics.summarise(ours), metrics.summarise(ident)
        print(
            f"{src_name.upper() + '->T1':<12}{mo['ssim_tar']['mean']:>10.3f}"
            f"{mo['psnr']['mean']:>8.2f}   {'':>10}{mi['ssim_tar']['mean']:>6.3f}"
            f"{mi['psnr']['mean']:>7.2f}{per_slice:>9.1f}"
        )
        j = len(idx) // 2
        _show(axes[row, 0], src[j], f"source {src_name.upper()}")
        _show(axes[row, 1], out[j], f"translated (SSIM {ours[j]['ssim_tar']:.2f})")
        _show(axes[row, 2], truth[j], "MNI152 T1 (truth)")
    fig.tight_layout()
    fig.savefig(args.out / "translation.png")
    plt.close(fig)
    print(f"translation figure: {args.out / 'translation.png'}")
