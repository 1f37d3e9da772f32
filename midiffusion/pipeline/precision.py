"""The floating-point precision the network runs in: float32, or bfloat16 autocast.

bfloat16 keeps float32's exponent range, so neither training nor sampling needs loss scaling;
it pays off only where the hardware computes it natively (CUDA GPUs, and CPUs with AVX512-BF16
or AMX). Elsewhere it is emulated and slower than float32, which is why ``auto`` looks first.
Only the network is autocast: LMI, the sampler arithmetic and the loss stay in float32.
torch is imported inside the functions, so command lines can offer PRECISIONS without loading it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = (
    "network precision; auto: bf16 autocast where the hardware has it (GPU, AVX512-BF16 or AMX "
    "CPU), else fp32"
)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu  # private probes: torch has no public bf16 capability query for CPUs
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes ``bf16`` where the hardware has it, else ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: accepted: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def network_autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context to run the network in, for a resolved precision."""
    if precision == "bf16":
        import torch

        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
