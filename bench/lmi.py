"""Speed and memory of the LMI operator, both modes: prints a table.

    python bench/lmi.py                 # 1 and 16 slices of 128x128, CPU (and GPU when present)
    python bench/lmi.py --memory-256    # also the memory bound: 16 slices of 256x256 (1 timed call)
    python bench/lmi.py --threads 1     # torch intra-op threads (default: all cores)
    python bench/lmi.py --published     # also the published operator's dense computation
                                        # (bench/lmi_dense.py) on 1 x 128x128, and the ratio

Time: median of 5 calls after one warm-up call, wall clock and process CPU time (all threads
summed; on a shared machine it is the steadier figure). Peak memory: each configuration runs in a
fresh subprocess; on the CPU the figure is the growth of the process's peak resident set
(``resource.getrusage().ru_maxrss``) during the first call, over the resident set just before it
(inputs already built); on a GPU it is ``torch.cuda.max_memory_allocated`` over the allocation
before the call. Inputs: source = the reference T2w slice z70 (tests/data), target = the
noisy diffusion state of the same slice (values far outside [0, 1]), i.e. the LMI call made at every
sampling step; without that file a synthetic phantom with the same roles is used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "lmi_faithful_128.npz"
PUBLISHED = "published operator (docs/lmi.md): about 3000 ms and 1.8 GB for 1 x 128x128"


def _inputs(batch: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    if REFERENCE.is_file():
        import numpy as np

        with np.load(REFERENCE) as data:
            src = torch.from_numpy(data["z70_noisy_nmi_source"])
            tgt = torch.from_numpy(data["z70_noisy_nmi_target"])
    else:
        gen = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(
            torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 128), indexing="ij"
        )
        rad = (yy**2 + xx**2).sqrt()
        src = torch.where(rad < 0.8, 0.4, 0.0) + torch.where(rad < 0.5, 0.4, 0.0)
        tgt = 0.28 * src + 0.96 * torch.randn(128, 128, generator=gen)
    if size != 128:
        src = torch.nn.functional.interpolate(src[None, None], size=(size, size))[0, 0]
        tgt = torch.nn.functional.interpolate(tgt[None, None], size=(size, size))[0, 0]
    src = src.expand(batch, 1, size, size).contiguous().to(device)
    tgt = tgt.expand(batch, 1, size, size).contiguous().to(device)
    return src, tgt


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(mode: str, batch: int, size: int, device: str, repeats: int) -> dict:
    """Runs in its own process, so that the peak-memory figure belongs to this call alone."""
    from midiffusion.lmi import local_mutual_information

    src, tgt = _inputs(batch, size, device)

    def call() -> None:
        with torch.no_grad():
            if mode == "published":
                from lmi_dense import dense_faithful_similarity

                dense_faithful_similarity(src, tgt)
            else:
                local_mutual_information(src, tgt, mode=mode)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "ms": 1000 * statistics.median(times),
        "cpu_ms": 1000 * statistics.median(cpu),
        "peak_mb": max(peak, 0) / 2**20,
    }


def estimator_table() -> None:
    """How the clean estimator's bandwidth rule behaves on the reference slices (--estimator).

    For z70 and z95 (averaged): the mean similarity over the head of the cross map LMI(T2w, T1),
    of T2w against independent N(0,1) noise, d' between those two maps' head pixels, the mean
    |self-LMI(T2w) - self-LMI(T1)|, a low-contrast PDw-like source (0.70 + 0.08 (1 - T1) in the
    head, noise std 0.02) against T1 and against noise, and the published "dynamic range" check:
    identical vs independent uniform-noise images.
    """
    import numpy as np

    import midiffusion.lmi.clean as clean
    from midiffusion.lmi import local_mutual_information

    with np.load(REFERENCE) as data:
        slices = {
            z: (data[f"{z}_cross_nmi_source"], data[f"{z}_cross_nmi_target"])
            for z in ("z70", "z95")
        }
    gen = torch.Generator().manual_seed(0)

    def sim(s, x, bw):
        return local_mutual_information(s, x, bandwidth=bw).similarity[0, 0]

    def dprime(a, b):
        return float((a.mean() - b.mean()) / (0.5 * (a.var() + b.var())).sqrt())

    settings = [("fixed", v, 0.0) for v in (0.05, 0.08, 0.12, 0.2)]
    settings += [("auto", c, n) for c in (0.25, 0.5, 1.0) for n in (0.0, 1.0, 2.0)]
    settings += [("auto", c, n) for c in (0.1, 0.15) for n in (2.0, 3.0)]
    print("rule          cross  noise   d'   |selfT2-selfT1|  pd-T1  pd-noise  pd d'  U=U  U,U'")
    for kind, value, noise_factor in settings:
        if kind == "auto":
            clean.AUTO_FACTOR, clean.AUTO_NOISE_FACTOR, bw = value, noise_factor, "auto"
        else:
            bw = value
        rows = []
        for src_np, tgt_np in slices.values():
            src = torch.from_numpy(src_np)[None, None]
            tgt = torch.from_numpy(tgt_np)[None, None]
            head = (tgt[0, 0] > 0.05) | (src[0, 0] > 0.05)
            noise = torch.randn(src.shape, generator=gen)
            cross, vs_noise = sim(src, tgt, bw)[head], sim(src, noise, bw)[head]
            self_gap = (sim(src, src, bw) - sim(tgt, tgt, bw)).abs()[head]
            body = (tgt > 0.05).float()
            pd = body * (0.70 + 0.08 * (1 - tgt) + 0.02 * torch.randn(src.shape, generator=gen))
            pd_cross, pd_noise = sim(pd, tgt, bw)[head], sim(pd, noise, bw)[head]
            u1, u2 = torch.rand(2, 1, 1, 128, 128, generator=gen)
            rows.append(
                [
                    cross.mean(),
                    vs_noise.mean(),
                    dprime(cross, vs_noise),
                    self_gap.mean(),
                    pd_cross.mean(),
                    pd_noise.mean(),
                    dprime(pd_cross, pd_noise),
                    sim(u1, u1, bw).mean(),
                    sim(u1, u2, bw).mean(),
                ]
            )
        m = np.array([[float(v) for v in r] for r in rows]).mean(0)
        name = f"{value:g}" if kind == "fixed" else f"auto {value:g}|n{noise_factor:g}"
        print(
            f"{name:13} {m[0]:5.3f}  {m[1]:5.3f} {m[2]:5.2f}  {m[3]:14.3f}  {m[4]:5.3f}  "
            f"{m[5]:8.3f} {m[6]:5.2f}  {m[7]:4.2f}  {m[8]:4.2f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-256", action="store_true", help="also 16 x 256x256")
    parser.add_argument("--estimator", action="store_true", help="bandwidth-rule measurements")
    parser.add_argument(
        "--published", action="store_true", help="also the published dense computation, 1 x 128"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # mode,batch,size,device (subprocess)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        mode, batch, size, device = args.one.split(",")
        print(json.dumps(measure_one(mode, int(batch), int(size), device, args.repeats)))
        return 0

    if args.estimator:
        estimator_table()
        return 0
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shapes = [(1, 128), (16, 128)] + ([(16, 256)] if args.memory_256 else [])
    load = os.getloadavg()[0]
    print(
        f"LMI bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at start"
    )
    print(
        f"input: {'reference slice z70 (T2w vs noisy state)' if REFERENCE.is_file() else 'phantom'}"
    )
    print(
        f"{'device':6} {'mode':9} {'batch x size':>13} {'median ms':>10} {'ms/slice':>9} "
        f"{'CPU ms':>8} {'peak MB':>8}"
    )
    rows = [(m, b, s) for m in ("clean", "faithful") for b, s in shapes]
    if args.published:
        rows.append(("published", 1, 128))
    results = {}
    for device in devices:
        for mode, batch, size in rows:
            # 256x256 is there for the memory bound: one timed call is enough.
            repeats = args.repeats if size == 128 else 1
            cmd = [
                sys.executable,
                __file__,
                "--one",
                f"{mode},{batch},{size},{device}",
                "--repeats",
                str(repeats),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[(device, mode, batch, size)] = res
            print(
                f"{device:6} {mode:9} {f'{batch} x {size}x{size}':>13} {res['ms']:10.1f} "
                f"{res['ms'] / batch:9.1f} {res['cpu_ms']:8.1f} {res['peak_mb']:8.1f}",
                flush=True,
            )
        if args.published:
            fast = results[(device, "faithful", 1, 128)]
            dense = results[(device, "published", 1, 128)]
            print(
                f"{device}: faithful is {dense['ms'] / fast['ms']:.1f}x faster than the published "
                f"computation on 1 x 128x128 (wall), {dense['cpu_ms'] / fast['cpu_ms']:.1f}x "
                f"(process CPU time); {_dense_deviation():.1e} from the published reference"
            )
    if not args.published:
        print(PUBLISHED)
    return 0


def _dense_deviation() -> float:
    """Largest |similarity| gap of the dense computation to the published reference vectors."""
    import numpy as np
    from lmi_dense import dense_faithful_similarity

    with np.load(REFERENCE) as data:
        src = torch.from_numpy(data["z70_noisy_nmi_source"])[None, None]
        tgt = torch.from_numpy(data["z70_noisy_nmi_target"])[None, None]
        ref = torch.from_numpy(data["z70_noisy_nmi_similarity"])
    with torch.no_grad():
        return float((dense_faithful_similarity(src, tgt)[0, 0] - ref).abs().max())


if __name__ == "__main__":
    raise SystemExit(main())
