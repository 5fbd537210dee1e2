"""The app factory each ``--workers`` process runs: it opens the registry from the settings its parent passed."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from . import SPEC_ENV, create_app

if TYPE_CHECKING:
    from starlette.applications import Starlette


def build() -> Starlette:
    """Open the registry described by ``$MODELKEEP_SERVE_SPEC`` and build this worker's app."""
    from ..config import load_settings
    from ..registry import ModelPersistence

    spec = json.loads(os.environ[SPEC_ENV])
    s = spec["settings"]
    settings = load_settings(s.get("config_path"), **s.get("overrides", {}))
    settings.persistence.trusted_types = [*settings.persistence.trusted_types, *s.get("trust", [])]
    settings.apply_logging()
    persistence = ModelPersistence.from_settings(settings)
    return create_app(persistence, spec["reference"], **spec["app"])
