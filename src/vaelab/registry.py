"""Models and samplers by name. A model file registers its module with one line,
``@register("name")``; the CLI, the trainer, the checkpoint loader, evaluation and the tests look
models up here and ask them what they can do (:attr:`vaelab.models.base.Model.capabilities`).
A sampler file (:mod:`vaelab.samplers`) registers its class the same way,
``@register_sampler("name")``, and ``--sampler`` is parsed against :data:`SAMPLERS`. Every module
of :mod:`vaelab.models` and of :mod:`vaelab.samplers` is imported with its package, so a new
model or sampler file needs no other edit."""
from __future__ import annotations

from .errors import VaelabError, did_you_mean, quote

MODELS: dict[str, type] = {}
# A model's former names, which runs saved under them (their config.json), --model and the
# Python API still take: each is read as the model's name today.
ALIASES: dict[str, str] = {}
DEFAULT_MODEL = "vae"    # what --model is when not given
DEFAULT_DATA = "digits"  # what --data is when not given: bundled, so a first run needs no files


def register(name: str, formerly: tuple[str, ...] = ()):
    """Class decorator: make the model class known as ``--model name`` (and as each of its
    ``formerly`` names, which old runs hold; none is shown as a choice)."""
    def add(cls):
        if name in MODELS or name in ALIASES or any(old in MODELS or old in ALIASES for old in formerly):
            raise ValueError(f"two models are registered as {name!r} or one of {formerly!r}")
        cls.name = name
        MODELS[name] = cls
        ALIASES.update({old: name for old in formerly})
        return cls
    return add


def model_name(name) -> str:
    """The name a model is registered under today for ``name`` (itself, or a former name)."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def get_model(name: str) -> type:
    """The model class registered as ``name`` (import it from :mod:`vaelab.models`, whose
    import registers them all)."""
    try:
        return MODELS[model_name(name)]
    except (KeyError, TypeError):
        raise VaelabError(f"--model must be one of {', '.join(sorted(MODELS))}, got {quote(name)}"
                          f"{did_you_mean(name, MODELS)}.") from None


SAMPLERS: dict[str, type] = {}  # --sampler's names (vaelab.samplers.base.BaseSampler subclasses)


def register_sampler(name: str):
    """Class decorator: make the sampler class known as ``--sampler name`` (or ``name:ARG``, for
    one that declares an ``argument``)."""
    def add(cls):
        if name in SAMPLERS or ":" in name:
            raise ValueError(f"two samplers are registered as {name!r}, or it has a ':'")
        cls.name = name
        SAMPLERS[name] = cls
        return cls
    return add


def get_sampler(name: str) -> type:
    """The sampler class registered as ``name`` (import :mod:`vaelab.samplers`, whose import
    registers them all)."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise VaelabError(f"--sampler must be one of {', '.join(sorted(SAMPLERS))}, got {quote(name)}"
                          f"{did_you_mean(name, SAMPLERS)}.") from None
