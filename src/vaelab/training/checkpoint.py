"""Self-describing checkpoints: ``config.json`` + ``safetensors``. Nothing is pickled.

A run directory holds:

* ``config.json``: format version, model name and config, data config and spec, train config;
* ``model.safetensors``: the weights after the last finished epoch (unwrapped module);
* ``best.safetensors``: the weights with the best validation score so far;
* ``resume.safetensors``: the weights again, optimizer tensors and RNG states, with the loop
  position, history and the non-tensor optimizer state as JSON metadata: one file, so resume
  never mixes the weights of one epoch with the optimizer state of another.

Every file is written to a temporary name in the same folder and renamed, so a crash never
leaves a half-written checkpoint (and a run removes the temporaries a crash leaves, see
:func:`remove_temporaries`). JSON is always valid: a NaN or infinity is written as null.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import VaelabError
from ..io import atomic_write, dumps, load_weights, read_metadata, read_tensors, weights_of

def save_resume(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                rng: dict[str, torch.Tensor], meta: dict[str, Any], averaged: torch.nn.Module | None = None) -> None:
    """One file: the weights, the optimizer states, the RNG states, the loop metadata and, with
    ``--ema``, the averaged weights beside the trained ones."""
    tensors: dict[str, torch.Tensor] = {f"rng.{k}": v.contiguous() for k, v in rng.items()}
    if averaged is not None:
        tensors.update({f"ema.{k}": v for k, v in weights_of(averaged).items()})
    tensors.update({f"model.{k}": v for k, v in weights_of(model).items()})
    optim_meta = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{name}.{idx}.{key}"] = val.detach().contiguous().cpu()
                else:
                    plain.setdefault(str(idx), {})[key] = val
        optim_meta[name] = {"param_groups": sd["param_groups"], "plain_state": plain}
    md = {"loop": dumps(meta), "optim": json.dumps(optim_meta)}
    atomic_write(path, lambda p: save_file(tensors, p, metadata=md))


def load_resume(path: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                averaged: torch.nn.Module | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the weights, optimizer states and averaged weights in place; return (rng states,
    loop metadata)."""
    tensors = read_tensors(path)
    load_weights(model, path, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if averaged is not None:
        load_weights(averaged, path, {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    try:
        md = read_metadata(path)
        optim_meta, loop = md["optim"], md["loop"]
        for name, opt in optimizers.items():
            state: dict[int, dict[str, Any]] = {}
            for key, val in tensors.items():
                parts = key.split(".")
                if parts[0] == "optim" and parts[1] == name:
                    state.setdefault(int(parts[2]), {})[parts[3]] = val
            for idx, plain in optim_meta[name]["plain_state"].items():
                state.setdefault(int(idx), {}).update(plain)
            opt.load_state_dict({"state": state, "param_groups": optim_meta[name]["param_groups"]})
            _layout_as_params(opt)
    except (KeyError, ValueError, IndexError) as e:
        raise VaelabError(f"cannot resume from {path}: its optimizer state does not fit this run ({e}).") from None
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, loop


def check_loop(path: Path, loop: Any) -> None:
    """Refuse the trainer's loop metadata of a resume file unless it holds whole counts, a numeric
    best score and a history of epochs that each say how long they took (a time budget sums them)."""
    def bad(what: str) -> VaelabError:
        return VaelabError(f"cannot resume from {path}: its {what}.")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if not isinstance(loop, dict):
        raise bad("loop metadata is not a table")
    for key in ("epoch", "global_step"):
        if not number(loop.get(key)) or not isinstance(loop[key], int) or loop[key] < 0:
            raise bad(f"'{key}' is {loop.get(key)!r}, expected a whole number of at least 0")
    if not number(loop.get("best")):
        raise bad(f"'best' is {loop.get('best')!r}, expected a number")
    history = loop.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and number(h.get("seconds")) for h in history):
        raise bad("'history' is not a list of epochs, each with its seconds")


def _layout_as_params(opt: torch.optim.Optimizer) -> None:
    """Saved state is contiguous; a channels_last parameter's moments must be laid out as it is
    (a fused kernel walks them side by side), as the optimizer's own zeros_like would have."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
