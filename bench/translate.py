"""Translation speed: seconds per 128 x 128 slice on the CPU, slices per second on a GPU.

    python bench/translate.py [--steps N] [--batch 8] [--faithful-steps 5] [--skip-faithful]

What is timed (docs/performance.md):
- default mode: the model card's sampler, steps, guidance and samples, end to end through
  ``Translator.translate_slices`` (self-LMI, then per step a cross-LMI and a U-Net call), for one
  slice and for a batch of ``--batch`` slices (reported per slice), in float32 and, where the CPU
  computes bfloat16 natively (AVX512-BF16 or AMX), in bfloat16 autocast
  (``midiffusion.pipeline.precision``);
- faithful mode: the published LMI operator (``mode="faithful"``, raw VP state, [0,1] data) with
  the DDPM sampler, timed over ``--faithful-steps`` steps and scaled to the published 1000. No
  faithful-trained model is needed for timing: the same network is fed faithful LMI maps (the
  outputs are meaningless, the work is identical). The self-LMI is counted in every timed step's
  share, so the scaled figure slightly overestimates;
- with CUDA present: a 128-slice volume at several batch sizes, slices per second at the best.

The network is the shipped ``t1w`` model when the store has it, else an untrained network of the
``t1w`` training config (the same architecture, so the same speed). Figures on a shared machine
are noisy: the script prints the load average and thread settings with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from midiffusion.model.unet import UNet, UNetConfig
from midiffusion.pipeline.precision import native_bf16
from midiffusion.pipeline.translate import Translator
from midiffusion.training.config import TrainConfig


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


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="default: the model card's")
    parser.add_argument("--batch", type=int, default=8, help="CPU batch size")
    parser.add_argument("--faithful-steps", type=int, default=5, help="DDPM steps timed")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--gpu-slices", type=int, default=128)
    args = parser.parse_args()

    cpu, name = load_translator("cpu")
    steps = args.steps or cpu.sampling.steps
    sampler = cpu.sampling.sampler
    guidance = cpu.sampling.guidance
    samples = cpu.sampling.samples
    src, what = source_slices(args.batch, cpu.grid)
    print(f"model: {name}; {sum(p.numel() for p in cpu.net.parameters()):,} parameters")
    print(f"input: {what}, {cpu.grid}x{cpu.grid}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, load average before "
        f"{os.getloadavg()[0]:.1f} (a shared machine: figures are noisy)"
    )
    run = dict(sampler=sampler, guidance=guidance, samples=samples, seed=0)
    print(
        f"\n== default mode (CPU): {sampler}, {steps} steps, guidance {guidance}, "
        f"mean of {samples} sample(s); precision auto = {cpu.precision} here"
    )
    for precision in ("fp32", "bf16") if native_bf16(cpu.device) else ("fp32",):
        t = Translator(cpu.net, cpu.card, cpu.device, precision)
        t.translate_slices(src[:1], steps=1, **run)  # warm-up (allocator, LMI tables, kernels)
        one = timed(lambda t=t: t.translate_slices(src[:1], steps=steps, **run))
        print(f"{precision} one slice:   {one:7.2f} s per slice")
        batch = timed(
            lambda t=t: t.translate_slices(src, steps=steps, batch_size=args.batch, **run)
        )
        print(
            f"{precision} batch of {args.batch:<3d}: {batch / args.batch:7.2f} s per slice "
            f"({batch:.1f} s)"
        )

    if not args.skip_faithful:
        k = args.faithful_steps
        faithful = faithful_translator(cpu)
        t = timed(
            lambda: faithful.translate_slices(
                src[:1], steps=k, sampler="ddpm", guidance=1.0, samples=1, batch_size=1
            )
        )
        per_step = t / k
        print(
            f"\n== faithful mode (CPU): published LMI + DDPM, batch 1, as published, "
            f"{faithful.precision}"
        )
        print(
            f"{k} steps in {t:.2f} s: {per_step:.2f} s per step (faithful LMI + U-Net) "
            f"-> {per_step * 1000:.0f} s per slice for 1000 steps ({per_step * 1000 / 60:.1f} min)"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    if torch.cuda.is_available():
        gpu = Translator(cpu.net, cpu.card, "cuda")  # auto: bf16 on a GPU that has it
        vol, _ = source_slices(args.gpu_slices, gpu.grid)
        print(f"\n== GPU: {torch.cuda.get_device_name()}, {len(vol)}-slice volume, {gpu.precision}")
        gpu.translate_slices(vol[:8], steps=2, **run)  # warm-up
        best = 0.0
        for bs in (16, 32, 64, 128):
            t = timed(lambda bs=bs: gpu.translate_slices(vol, steps=steps, batch_size=bs, **run))
            best = max(best, len(vol) / t)
            print(f"batch {bs:<4d} {t:7.2f} s for the volume, {len(vol) / t:7.1f} slices/s")
        print(f"best: {best:.1f} slices/s")
    else:
        print("\nno CUDA device here: GPU figures not measured")


if __name__ == "__main__":
    main()
