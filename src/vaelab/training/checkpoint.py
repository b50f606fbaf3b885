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

from ..errors import VaelabError, clip, quote
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
    loop metadata). A file that does not hold what :func:`save_resume` writes (a tampered or
    foreign one) raises :class:`VaelabError` naming it, never a torch error from inside."""
    tensors = read_tensors(path)
    load_weights(model, path, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    if averaged is not None:
        load_weights(averaged, path, {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    md = read_metadata(path)
    optim_meta = _optimizer_tables(path, md.get("optim"), optimizers)
    try:
        for name, opt in optimizers.items():
            state: dict[int, dict[str, Any]] = {}
            for key, val in tensors.items():
                parts = key.split(".")
                if parts[0] == "optim" and parts[1] == name:
                    state.setdefault(int(parts[2]), {})[parts[3]] = val
            for idx, plain in optim_meta[name]["plain_state"].items():
                state.setdefault(int(idx), {}).update(plain)
            _check_state_shapes(path, name, opt, state)
            opt.load_state_dict({"state": state, "param_groups": optim_meta[name]["param_groups"]})
            _layout_as_params(opt)
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
        raise VaelabError(f"cannot resume from {path}: its optimizer state does not fit this run "
                          f"({clip(e)}).") from None
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    _check_rng(path, rng)
    return rng, md.get("loop")


def _check_state_shapes(path: Path, name: str, opt: torch.optim.Optimizer, state: dict[int, dict[str, Any]]) -> None:
    """Refuse optimizer tensors that do not fit their parameters before the optimizer takes them:
    torch checks none of it on load, and a moment of another shape fails at the first step (or
    broadcasts, and the run then drops every step as non-finite). Each tensor of a parameter's
    state is its ``step`` (one number) or has the parameter's shape (Adam's moments, SGD's
    momentum)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for idx, entries in state.items():
        if not 0 <= idx < len(params):
            raise VaelabError(f"cannot resume from {path}: its optimizer {name!r} has state for parameter {idx}, "
                              f"but this run's has {len(params)} parameters.")
        for key, v in entries.items():
            if not isinstance(v, torch.Tensor):
                continue
            fits = v.numel() == 1 if key == "step" else tuple(v.shape) == tuple(params[idx].shape)
            if not fits:
                want = "one number" if key == "step" else f"shape {tuple(params[idx].shape)}, its parameter's"
                raise VaelabError(f"cannot resume from {path}: optim.{name}.{idx}.{key} has shape {tuple(v.shape)}, "
                                  f"expected {want}.")


def _optimizer_tables(path: Path, meta: Any, optimizers) -> dict[str, dict[str, Any]]:
    """The non-tensor state of each optimizer, as :func:`save_resume` writes it: a table of
    ``param_groups`` (a list of tables) and ``plain_state`` (parameter index -> table)."""
    for name in optimizers:
        entry = meta.get(name) if isinstance(meta, dict) else None
        groups = entry.get("param_groups") if isinstance(entry, dict) else None
        plain = entry.get("plain_state") if isinstance(entry, dict) else None
        if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups)
                and isinstance(plain, dict) and all(isinstance(v, dict) for v in plain.values())):
            raise VaelabError(f"cannot resume from {path}: the state of its optimizer {name!r} is not a table "
                              "of 'param_groups' (a list of tables) and 'plain_state' (a table of tables).")
    return meta


def _check_rng(path: Path, rng: dict[str, torch.Tensor]) -> None:
    """Refuse random-number states that torch would not take: each CPU one (``torch``, ``data``
    and the other ranks' ``torch.rankN``) is tried on a spare generator, which checks its size and
    contents exactly as the trainer's restore would."""
    for key in ("torch", "data"):
        if key not in rng:
            raise VaelabError(f"cannot resume from {path}: its random-number state rng.{key} is missing.")
    for key, state in rng.items():
        kind = key.split(".")[0]
        try:
            if kind in ("torch", "data"):
                torch.Generator().set_state(state)
            elif kind == "cuda":  # restored on a CUDA device only, and checked there when there is one
                if state.dtype != torch.uint8 or state.dim() != 1:
                    raise TypeError("expected a 1-D uint8 tensor")
                if torch.cuda.is_available():
                    torch.Generator("cuda").set_state(state)
            else:
                raise ValueError("vaelab writes no such state")
        except (RuntimeError, TypeError, ValueError) as e:
            why = str(e).partition("\n")[0]
            raise VaelabError(f"cannot resume from {path}: its random-number state rng.{key} ({state.numel()} "
                              f"{state.dtype} values) is not one torch can restore ({why}).") from None


def check_loop(path: Path, loop: Any) -> None:
    """Refuse the trainer's loop metadata of a resume file unless it holds whole counts, a numeric
    best score and a history of epochs that each say how long they took (a time budget sums them),
    one for each epoch it claims to have trained."""
    def bad(what: str) -> VaelabError:
        return VaelabError(f"cannot resume from {path}: its {what}.")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def count(v) -> bool:
        return number(v) and isinstance(v, int) and v >= 0
    if not isinstance(loop, dict):
        raise bad("loop metadata is not a table")
    for key in ("epoch", "global_step", "bad_run", "ema_updates"):  # the last two written by some runs only
        if (key in ("epoch", "global_step") or key in loop) and not count(loop.get(key)):
            raise bad(f"'{key}' is {quote(loop.get(key))}, expected a whole number of at least 0")
    if not number(loop.get("best")):
        raise bad(f"'best' is {quote(loop.get('best'))}, expected a number")
    history = loop.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and number(h.get("seconds")) for h in history):
        raise bad("'history' is not a list of epochs, each with its seconds")
    # every finished epoch is added to the history before the file is written
    if loop["epoch"] != len(history):
        raise bad(f"'epoch' is {loop['epoch']:,}, but its history holds {len(history):,} epoch{'s' if len(history) != 1 else ''}: "
                  "a run's resume file records every epoch it trained")
    scalers = loop.get("scalers", {})
    if not isinstance(scalers, dict) or not all(isinstance(v, dict) for v in scalers.values()):
        raise bad("'scalers' is not a table of loss-scaler states")


def _layout_as_params(opt: torch.optim.Optimizer) -> None:
    """Saved state is contiguous; a channels_last parameter's moments must be laid out as it is
    (a fused kernel walks them side by side), as the optimizer's own zeros_like would have."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
