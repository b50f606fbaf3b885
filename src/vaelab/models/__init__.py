"""One file per model. Importing this package imports every module in it, and each model file
registers itself (``@register``), so adding a model is adding its file. Look models up here:
``from vaelab.models import MODELS, get_model``."""
import importlib
import pkgutil

from ..registry import MODELS, get_model

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["MODELS", "get_model"]
