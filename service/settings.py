"""Settings from environment variables (prefix ``MIDIFF_``), one class per process kind."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORAGE_DIR = Path("var/midiffusion")


class CommonSettings(BaseSettings):
    """What the gateway and the workers must agree on: broker, job records, files."""

    model_config = SettingsConfigDict(env_prefix="MIDIFF_", extra="ignore")

    redis_url: str | None = Field(
        default=None,
        description="Redis for the Celery broker and job records; unset = embedded mode "
        "(in-memory broker, SQLite job records under the storage directory)",
    )
    storage_dir: Path = Field(
        default=DEFAULT_STORAGE_DIR,
        description="uploads and results (shared by gateway and workers)",
    )
    job_retention_s: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        description="how long a finished job, its input and output stay",
    )
    job_timeout_s: int = Field(
        default=3600, ge=1, description="a running job is stopped and failed after this long"
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Redis redelivers an unacknowledged task after this long; "
        "default: job timeout + 10 minutes, so it is always longer than the longest job",
    )
    model_dir: Path | None = Field(
        default=None, description="model store root; unset = the models shipped with the package"
    )

    @property
    def effective_visibility_timeout_s(self) -> int:
        if self.visibility_timeout_s is not None:
            return self.visibility_timeout_s
        return self.job_timeout_s + 600


class GatewaySettings(CommonSettings):
    """The FastAPI gateway."""

    api_keys: SecretStr = Field(
        default=SecretStr(""), description="comma-separated API keys accepted in X-API-Key"
    )
    auth_disabled: bool = Field(default=False, description="1 = accept requests without a key")
    max_upload_mb: int = Field(default=1024, ge=1, description="byte cap of one upload, in MiB")
    retry_after_s: int = Field(default=2, ge=1, description="the Retry-After hint for polling")
    max_steps: int = Field(default=1000, ge=1, description="largest accepted `steps`")
    cleanup_interval_s: int = Field(
        default=600, ge=0, description="seconds between cleanups of expired jobs; 0 = never"
    )
    requeue_interval_s: int = Field(
        default=30,
        ge=0,
        description="seconds between checks for jobs whose task never reached the queue "
        "(a gateway stopped between recording and sending); 0 = never (the embedded mode "
        "still sends every unfinished job again at start)",
    )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]


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
