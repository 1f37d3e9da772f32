"""A worker's settings (environment variables ``MIDIFF_*``), beyond those it shares with the
gateway (``jobs.settings.CommonSettings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

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
    store_outage_s: int = Field(
        default=120,
        ge=0,
        description="how long a worker keeps retrying the job store (Redis) while it is "
        "unreachable, so a Redis restart does not fail the running job",
    )
    worker_metrics_port: int = Field(
        default=0, ge=0, le=65535, description="Prometheus exporter port; 0 = off"
    )
    # Pushing a finished DICOM job's derived series to a PACS (``worker.pacs``): by STOW-RS when
    # pacs_stow_url is set, else by C-STORE when pacs_ae is set; neither = no push.
    pacs_stow_url: str | None = Field(
        default=None, description="STOW-RS URL, e.g. http://pacs:8042/dicom-web/studies"
    )
    pacs_stow_auth: SecretStr = Field(
        default=SecretStr(""), description="'user:password' (Basic) or 'Bearer <token>'"
    )
    pacs_ae: str | None = Field(default=None, description="the PACS's AE title, for C-STORE")
    pacs_host: str = Field(default="127.0.0.1", description="the PACS's DICOM host")
    pacs_port: int = Field(default=104, ge=1, le=65535, description="the PACS's DICOM port")
    pacs_calling_ae: str = Field(default="MIDIFF", description="our AE title when pushing")
    push_attempts: int = Field(default=4, ge=1, le=10, description="tries per push")
    push_backoff_s: float = Field(
        default=2.0, ge=0, description="pause after the first failed try; doubled after each"
    )
