"""Settings from environment variables (prefix ``MIDIFF_``) that gateway and workers share.

Each process kind extends :class:`CommonSettings`: ``service.settings.GatewaySettings`` and
``worker.settings.WorkerSettings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
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
