"""Translation speed: seconds per 128 x 128 slice for the default, ``fast`` and faithful modes.

    python bench/translate.py [--batch 8] [--faithful-steps 5] [--skip-faithful]

What is timed (docs/performance.md):
- a **convolution unit**: a fixed float32 workload (ten 3x3 convolutions, 64 -> 64 channels, over
  4 x 128 x 128), so that figures from different machines, or from one machine under different
  load, can be compared: every mode is also given in these units. It is timed first, with the
  C library's default allocator settings, as in any plain process;
- **default** and **fast** (the model card's sampling defaults and its ``fast`` preset), end to
  end through ``Translator.translate_slices`` (self-LMI, then per step a cross-LMI and a U-Net
  call): one slice alone, and the cost of one more slice in a volume, from the difference
  between ``--batch`` + 3 slices and 3 slices (what a long volume pays per slice), in the
  precision ``auto`` picks and, where the CPU computes bfloat16 natively, in float32 too;
- **faithful**: the published LMI operator (``mode="faithful"``, raw VP state) with the DDPM
  sampler, timed over ``--faithful-steps`` steps and scaled to the published 1000. No
  faithful-trained model is needed for timing: the same network is fed faithful LMI maps (the
  outputs are meaningless, the work is identical);
- with CUDA present: a 128-slice volume end to end (``Translator.translate``: planning,
  resampling, sampling, mapping back) at 128 x 128 and at 256 x 256, default and fast.

The network is the shipped default ``t1w`` model when the store has it, else an untrained network
of the ``t1w`` training config (the same architecture, so the same speed). Figures on a shared
machine are noisy: the script prints the load average and thread settings with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import nibabel as nib
import numpy as np
import torch

from midiffusion.model.unet import UNet, UNetConfig
from midiffusion.pipeline.precision import native_bf16
from midiffusion.pipeline.translate import Translator
from midiffusion.training.config import TrainConfig

BASE_SLICES = 3  # the short volume whose time the per-slice cost is measured against


def load_translator(device: str) -> tuple[Translator, str]:
    from model_store import ModelCard, ModelIntegrityError, ModelNotFoundError, ModelStore

    try:
        v = ModelStore().verified("t1w")
        return Translator.load(v.card, v.weights_path, device), f"shipped t1w v{v.card.version}"
    except (ModelNotFoundError, ModelIntegrityError):
        config = TrainConfig.load("t1w")
        torch.manual_seed(0)
        net = UNet(UNetConfig.from_dict(config.network))
        card = ModelCard(
            name="untrained",
            version=1,
            target_modality="T1w",
            grid_size=config.grid_size,
            sha256="0" * 64,
            parameters=sum(p.numel() for p in net.parameters()),
            network=config.network,
            schedule=config.schedule,
            conditioning=config.conditioning,
            sampling={},  # the card's defaults, as `models publish` writes them
            training={},
        )
        return Translator(net, card, device), "untrained network of the t1w config"


def faithful_translator(base: Translator) -> Translator:
    from model_store import ConditioningSection

    # the conditioning a faithful-trained model records (the t1w-faithful training preset)
    faithful = ConditioningSection.model_validate(TrainConfig.load("t1w-faithful").conditioning)
    card = base.card.model_copy(update={"conditioning": faithful})
    return Translator(base.net, card, base.device, base.precision)


def source_slices(n: int, grid: int) -> tuple[np.ndarray, str]:
    """Real mni-synth T2w slices when the set is built (and on the grid), else a phantom."""
    try:
        from midiffusion.data.sets import load_volumes

        vol = np.asarray(load_volumes("mni-synth")["t2w"].dataobj, np.float32)
        if vol.shape[:2] == (grid, grid):
            idx = np.linspace(0, vol.shape[2] - 1, n).round().astype(int)
            return np.ascontiguousarray(np.moveaxis(vol, 2, 0)[idx]), "mni-synth T2w slices"
    except FileNotFoundError:
        pass
    yy, xx = np.mgrid[:grid, :grid] / grid - 0.5
    head = ((yy / 0.4) ** 2 + (xx / 0.33) ** 2 < 1) * (0.5 + 0.4 * np.cos(12 * xx) * np.sin(9 * yy))
    return np.repeat(head[None].astype(np.float32).clip(0, 1), n, 0), "a synthetic phantom"


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def convolution_unit() -> float:
    """Seconds for the fixed float32 workload (median of 3, after a warm-up)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 128, 128, generator=gen)
    w = torch.randn(64, 64, 3, 3, generator=gen) / 24

    def work() -> None:
        with torch.no_grad():
            for _ in range(10):
                torch.nn.functional.conv2d(x, w, padding=1)

    work()
    return statistics.median(timed(work) for _ in range(3))


def preset_line(t: Translator, preset: str) -> str:
    s = t.sampling.preset(preset)
    pairs = " in antithetic pairs" if s.antithetic and s.samples > 1 else ""
    return (
        f"{s.sampler}, {s.steps} steps, guidance {s.guidance_text()}, "
        f"mean of {s.samples} sample(s){pairs}"
    )


def time_preset(t: Translator, src: np.ndarray, preset: str, unit: float) -> None:
    run = {"preset": preset, "seed": 0, "batch_size": len(src)}
    t.translate_slices(src[:1], steps=1, preset=preset)  # warm-up (allocator, LMI tables)
    one = timed(lambda: t.translate_slices(src[:1], **run))
    short = timed(lambda: t.translate_slices(src[:BASE_SLICES], **run))
    long = timed(lambda: t.translate_slices(src, **run))
    more = (long - short) / (len(src) - BASE_SLICES)
    print(
        f"{preset:8s} {t.precision}: one slice {one:6.2f} s ({one / unit:4.1f} units); "
        f"each slice of a volume {more:6.2f} s ({more / unit:4.1f} units; "
        f"{len(src)} slices {long:.1f} s, {BASE_SLICES} slices {short:.1f} s)"
    )


def time_gpu_volumes(base: Translator, slices: int) -> None:
    gpu = Translator(base.net, base.card, "cuda")  # auto: bf16 on a GPU that has it
    print(f"\n== GPU: {torch.cuda.get_device_name()}, {slices}-slice volumes, {gpu.precision}")
    grid_slices, _ = source_slices(slices, base.grid)
    for size in (128, 256):
        vol = grid_slices
        if size != base.grid:
            zoom = torch.nn.functional.interpolate(torch.from_numpy(vol)[:, None], size=size)
            vol = zoom[:, 0].numpy()
        image = nib.Nifti1Image(np.moveaxis(vol, 0, 2), np.diag([1.0, 1.0, 1.0, 1.0]))
        gpu.translate(image, steps=1, batch_size=slices)  # warm-up
        for preset in gpu.sampling.offered_presets:
            t = timed(lambda i=image, p=preset: gpu.translate(i, preset=p, batch_size=slices))
            print(
                f"{size}x{size}, {preset:8s}: {t:6.2f} s for the volume, {slices / t:6.1f} slices/s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="extra slices of the long volume")
    parser.add_argument("--faithful-steps", type=int, default=5, help="DDPM steps timed")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--gpu-slices", type=int, default=128)
    args = parser.parse_args()

    # before any Translator exists: it tunes the process's malloc (host_memory.py), which would
    # make the unit cheaper than in a plain process, where an outside check times it
    unit = convolution_unit()
    cpu, name = load_translator("cpu")
    src, what = source_slices(args.batch + BASE_SLICES, cpu.grid)
    print(f"model: {name}; {sum(p.numel() for p in cpu.net.parameters()):,} parameters")
    print(f"input: {what}, {cpu.grid}x{cpu.grid}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, bf16 in hardware: "
        f"{native_bf16(cpu.device)}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
        f", load average before {os.getloadavg()[0]:.1f} (a shared machine: figures are noisy)"
    )
    print(f"convolution unit (fixed float32 workload): {unit:.3f} s")

    print("\n== default and fast (CPU)")
    presets = cpu.sampling.offered_presets
    for preset in presets:
        print(f"{preset}: {preset_line(cpu, preset)}")
    precisions = ("bf16", "fp32") if native_bf16(cpu.device) else ("fp32",)
    for precision in precisions:
        t = Translator(cpu.net, cpu.card, cpu.device, precision)
        for preset in presets:
            time_preset(t, src, preset, unit)

    if not args.skip_faithful:
        k = args.faithful_steps
        faithful = faithful_translator(cpu)
        t = timed(
            lambda: faithful.translate_slices(
                src[:1], steps=k, sampler="ddpm", guidance=1.0, samples=1, batch_size=1
            )
        )
        per_slice = t / k * 1000
        print(f"\n== faithful (CPU): published LMI + 1000-step DDPM, batch 1, {faithful.precision}")
        print(
            f"{k} steps in {t:.2f} s -> {per_slice:.0f} s per slice ({per_slice / 60:.1f} min, "
            f"{per_slice / unit:.0f} units)"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    if torch.cuda.is_available():
        time_gpu_volumes(cpu, args.gpu_slices)
    else:
        print("\nno CUDA device here: GPU figures not measured")


if __name__ == "__main__":
    main()
