"""The model registry (code) and the stored models (data, under ``models/``).

Torch-free on purpose: the gateway lists and validates models without loading any weights. The
typed card (``card``) is what the science may import from here.
"""

from model_store.card import (
    DEFAULT_SAMPLING,
    FAITHFUL_SAMPLING,
    MIN_INPLANE,
    SAMPLER_NAMES,
    ConditioningSection,
    LMISection,
    ModelCard,
    NetworkSection,
    SamplingSection,
    ScheduleSection,
)
from model_store.files import sha256_file
from model_store.registry import (
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStore,
    VerifiedModel,
)

__all__ = [
    "DEFAULT_SAMPLING",
    "FAITHFUL_SAMPLING",
    "MIN_INPLANE",
    "SAMPLER_NAMES",
    "ConditioningSection",
    "LMISection",
    "ModelCard",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelStore",
    "NetworkSection",
    "SamplingSection",
    "ScheduleSection",
    "VerifiedModel",
    "sha256_file",
]
