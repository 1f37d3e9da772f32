"""A worker's settings (environment variables ``MIDIFF_*``), beyond those it shares with the
gateway (``jobs.settings.CommonSettings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from jobs.settings import CommonSettings


class WorkerSettings(CommonSettings):
    """A Celery worker process (one per GPU)."""

    device: str = Field(default="auto", description="torch device: auto, cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto",
        description="network precision; auto: bf16 where the hardware has it (GPU, AVX512-BF16 "
        "or AMX CPU), else fp32",
    )
    max_deliveries: int = Field(
        default=3, ge=1, description="a job whose worker dies this many times is failed"
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus exporter port; 0 = off"
    )
