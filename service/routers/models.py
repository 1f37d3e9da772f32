"""``GET /models``: what the model store holds (cards only; weights stay on disk)."""

from __future__ import annotations

from fastapi import APIRouter

from service.context import Ctx, Principal
from service.schemas import ModelsOut

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsOut, summary="Available models and the default")
def list_models(_: Principal, ctx: Ctx) -> ModelsOut:
    cards = ctx.models.cards()
    return ModelsOut(
        default=ctx.models.default_name(), models=[c.model_dump(mode="json") for c in cards]
    )
