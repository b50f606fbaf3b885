"""Batches for a model that reads labels, as the trainer gives them: tests that feed synthetic
images to every registered model pass them through :func:`fed` (a model that ignores labels gets
the images alone, as before)."""
import torch

from vaelab.data import Batch


def fed(model, x):
    """``x`` [B, *shape] as ``model``'s step and validation take it: for a model that reads labels
    (``needs_labels``) a Batch with labels 0, 1, 2, ... in turn and, for one that learns from a
    few (``labelled_part``), other images as its labelled part (x in reverse order, with their
    labels), so a step that took one part for the other would differ; else ``x`` itself. A list
    (a step of several minibatches) is fed one by one."""
    if isinstance(x, (list, tuple)):
        return [fed(model, v) for v in x]
    if not getattr(model, "needs_labels", False):
        return x
    y = torch.arange(len(x)) % model.cfg.num_classes
    part = Batch(x.flip(0), y.flip(0)) if getattr(model, "labelled_part", False) else None
    return Batch(x, y, labelled_part=part)


def as_validation(model, x):
    """``x`` as ``model.validation`` takes it: a Batch, with labels for a model that reads them."""
    b = fed(model, x)
    return b if isinstance(b, Batch) else Batch(b)


def given(model, x) -> dict:
    """What a conditional model's ``log_weights`` and ``encode`` take beside x (``y``: labels
    0, 1, 2, ... in turn); nothing for any other."""
    if not getattr(model, "conditional", False):
        return {}
    return {"y": torch.arange(len(x)) % model.cfg.num_classes}
