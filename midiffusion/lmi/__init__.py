"""Local-wise mutual information: the public API (``api``) and its two operators.

``clean`` is the project's differentiable LMI, ``faithful`` the published operator bit for bit;
callers use :func:`local_mutual_information` and :class:`LMISettings`, which pick between them,
or :class:`SourceLMI` to compare one source with many targets.
"""

from midiffusion.lmi.api import (
    CLEAN_PATCH_SIZES,
    FAITHFUL_PATCH_SIZES,
    LMIResult,
    LMISettings,
    Mode,
    SourceLMI,
    local_mutual_information,
)

__all__ = [
    "CLEAN_PATCH_SIZES",
    "FAITHFUL_PATCH_SIZES",
    "LMIResult",
    "LMISettings",
    "Mode",
    "SourceLMI",
    "local_mutual_information",
]
