"""Models by name. A model file registers its module with one line, ``@register("name")``;
the CLI, the trainer, the checkpoint loader, evaluation and the tests look models up here and
ask them what they can do (:attr:`vaelab.models.base.Model.capabilities`). Every module of
:mod:`vaelab.models` is imported with the package, so a new model file needs no other edit."""
from __future__ import annotations

from .errors import VaelabError

MODELS: dict[str, type] = {}
DEFAULT_MODEL = "vae"    # what --model is when not given
DEFAULT_DATA = "digits"  # what --data is when not given: bundled, so a first run needs no files


def register(name: str):
    """Class decorator: make the model class known as ``--model name``."""
    def add(cls):
        if name in MODELS:
            raise ValueError(f"two models are registered as {name!r}")
        cls.name = name
        MODELS[name] = cls
        return cls
    return add


def get_model(name: str) -> type:
    """The model class registered as ``name`` (import it from :mod:`vaelab.models`, whose
    import registers them all)."""
    try:
        return MODELS[name]
    except KeyError:
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {name!r}.") from None
