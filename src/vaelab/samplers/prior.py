"""``prior``: the model's own ``sample``, z ~ p(z) decoded; nothing is fitted (a model that
declares SAMPLE; most models' default)."""
from __future__ import annotations

from ..errors import VaelabError
from ..models.base import ENCODE, SAMPLE
from ..registry import register_sampler
from .base import BaseSampler


@register_sampler("prior")
class PriorSampler(BaseSampler):
    title = "The model's prior"
    caption = ("the model's own prior p(z), mapped to images by its decoder (a GAN's generator): nothing is "
               "fitted after training")
    order = 0
    fitted = False

    def check(self, model_cls, where) -> None:
        if SAMPLE not in model_cls.capabilities:
            fit = ", or --sampler gmm:K to fit a mixture to its codes" if ENCODE in model_cls.capabilities else ""
            raise VaelabError(f"{where} holds a {model_cls.name}, which has no prior to sample from; try vaelab "
                              f"reconstruct or interpolate{fit}.")
