"""What every part of the FineTuneJob API shares: its group/version/kind, the strict base model and
the one-line configuration error.

Who uses it: the other modules of :mod:`kubeclip.api`; through them the trainer, the controller
and the CLI. It imports pydantic only.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

API_GROUP = "kubeclip.dev"
API_VERSION = "v1alpha1"
KIND = "FineTuneJob"


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, field names are the camelCase API names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ConfigError(ValueError):
    """A config the user must fix; ``str()`` is one line naming each bad key by its path."""


def format_validation_error(err: ValidationError, prefix: str = "spec") -> str:
    """One line: ``spec.training.batchSize: Input should be greater than or equal to 1; ...``."""
    parts = []
    for e in err.errors():
        loc = ".".join([prefix, *(str(p) for p in e["loc"])]) if e["loc"] else prefix
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)
