"""What one gateway holds (settings, job store, storage, queue, models), and the FastAPI
dependencies that hand it to routes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, Request

from jobs import JobStore
from jobs.storage import LocalStorage
from service.auth import ApiKeyAuth
from service.problems import Problem
from service.settings import GatewaySettings


class ModelCatalog:
    """The model store's cards, re-read at most every ``ttl_s`` (a submission must not touch
    the disk for them). Torch-free: ``model_store`` only reads cards here."""

    def __init__(self, root: Any = None, ttl_s: float = 10.0) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._cards: list[Any] = []
        self._default: str | None = None
        self._serving: dict[str, int] = {}  # name -> the version a bare name resolves to
        self._read_at = -float("inf")

    def _refresh(self) -> None:
        from model_store import ModelStore

        store = ModelStore(root=self.root)
        cards = store.list()
        self._cards = cards
        self._default = store.default_name() if cards else None
        # the store decides what a bare name means (its default alias, else the latest)
        self._serving = {n: store.card(n).version for n in {c.name for c in cards}}
        self._read_at = time.monotonic()

    def cards(self) -> list[Any]:
        with self._lock:
            if time.monotonic() - self._read_at > self.ttl_s:
                self._refresh()
            return list(self._cards)

    def default_name(self) -> str | None:
        self.cards()
        return self._default

    def resolve(self, requested: str | None) -> Any:
        """``name`` (the store's serving version) or ``name:version`` -> card; 422 naming what
        exists."""
        cards = self.cards()
        available = sorted(f"{c.name}:{c.version}" for c in cards)
        if not cards:
            raise Problem(503, "no-models", "the model store holds no models; see GET /models")
        name, _, version_text = (requested or self.default_name() or "").partition(":")
        matches = [c for c in cards if c.name == name]
        if version_text:
            if not version_text.isdigit():
                raise Problem(
                    422,
                    "unknown-model",
                    f"model version must be a whole number, as in `{name}:1`; got `{requested}`",
                    available=available,
                )
            matches = [c for c in matches if c.version == int(version_text)]
        else:
            matches = [c for c in matches if c.version == self._serving.get(name)]
        if not matches:
            raise Problem(
                422,
                "unknown-model",
                f"no model `{requested}`; available: {', '.join(available)} "
                "(give `name` for its serving version, or `name:version`)",
                available=available,
            )
        return matches[0]


@dataclass
class GatewayContext:
    settings: GatewaySettings
    jobs: JobStore
    storage: LocalStorage
    celery: Celery
    models: ModelCatalog
    auth: ApiKeyAuth
    # name -> check returning None when healthy, else what is wrong (for /health/ready)
    extra_checks: dict[str, Callable[[], str | None]] = field(default_factory=dict)


def get_context(request: Request) -> GatewayContext:
    return request.app.state.ctx


def require_principal(request: Request) -> str:
    """Auth dependency: the caller's principal (a hash of its key), or 401."""
    return request.app.state.ctx.auth(request)


Ctx = Annotated[GatewayContext, Depends(get_context)]
Principal = Annotated[str, Depends(require_principal)]
