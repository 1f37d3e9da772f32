"""The parts of a job's result besides the translation: ``GET /jobs/{id}/result?part=...``."""

from __future__ import annotations

import re

from fastapi.responses import FileResponse

from jobs import JobOutput
from service.context import GatewayContext
from service.problems import Problem

PARTS = ("uncertainty",)


def uncertainty_filename(result_filename: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.nii|\.png|\.zip)$", "", result_filename, flags=re.IGNORECASE)
    return f"{stem}_uncertainty.nii.gz"


def result_part(ctx: GatewayContext, output: JobOutput, part: str) -> FileResponse:
    """The ``part`` of a succeeded job's ``output``. ``uncertainty``: the per-voxel standard
    deviation between the averaged draws, as NIfTI in the input's geometry (zero everywhere
    with one draw)."""
    if part not in PARTS:
        raise Problem(
            422,
            "unknown-part",
            f"no result part `{part[:40]}`; accepted: {', '.join(PARTS)} "
            "(or no `part` for the translation itself)",
        )
    if not output.uncertainty_key:
        raise Problem(
            404,
            "part-not-available",
            "this job has no uncertainty map (it was translated before the service made them)",
        )
    path = ctx.storage.path(output.uncertainty_key)
    if not path.is_file():
        raise Problem(410, "result-gone", "the job's uncertainty map is no longer stored")
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=uncertainty_filename(output.filename),
    )
