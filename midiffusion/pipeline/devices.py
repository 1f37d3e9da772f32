"""The torch device to run on: the one place that turns auto, cpu or cuda[:N] into a device.

torch is imported inside, so command lines can declare --device without loading it.
"""

from __future__ import annotations

import re

DEVICE_HELP = "auto (a GPU when there is one), cpu, cuda or cuda:N"
_CUDA = re.compile(r"cuda(:\d+)?")


def resolve_device(name: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is checked."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if not _CUDA.fullmatch(name):
        raise ValueError(f"device {name!r}: accepted: {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return name


def reset_peak_memory(device: object) -> None:
    """Start counting the peak memory of ``device`` afresh (a no-op off CUDA)."""
    import torch

    device = torch.device(device)  # type: ignore[arg-type]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: object) -> int:
    """The most memory torch held on ``device`` since :func:`reset_peak_memory`; 0 off CUDA."""
    import torch

    device = torch.device(device)  # type: ignore[arg-type]
    if device.type != "cuda":
        return 0
    return int(torch.cuda.max_memory_allocated(device))
