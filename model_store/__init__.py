"""The model registry (code) and the stored models (data, under ``models/``).

Torch-free on purpose: the gateway lists and validates models without loading any weights.
"""

from model_store.registry import (
    DEFAULT_SAMPLING,
    SAMPLER_NAMES,
    ModelCard,
    ModelIntegrityError,
    ModelNotFoundError,
    ModelStore,
    VerifiedModel,
    sha256_file,
)

__all__ = [
    "DEFAULT_SAMPLING",
    "SAMPLER_NAMES",
    "ModelCard",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelStore",
    "VerifiedModel",
    "sha256_file",
]
