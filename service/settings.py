"""The gateway's settings (environment variables ``MIDIFF_*``), beyond those it shares with the
workers (``jobs.settings.CommonSettings``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from jobs.settings import CommonSettings


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

    max_queued_per_key: int = Field(
        default=100,
        ge=0,
        description="most jobs one API key may have waiting in the queue; over it the gateway "
        "answers 429 with Retry-After; 0 = no limit",
    )
    queue_full_retry_after_s: int = Field(
        default=30, ge=1, description="the Retry-After hint of a 429 (a caller's queue is full)"
    )
    audit_log: Path | None = Field(
        default=None,
        description="append the audit log (JSON lines: submissions, downloads, deletions) to "
        "this file too; it always goes to the logger `midiffusion.audit`",
    )

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]
