"""A small registry of skeleton backbones.

Every backbone maps a skeleton batch ``(N, C, T, V, M)`` to an ``(N, D)`` embedding and
exposes ``out_dim``. A backbone registers a factory whose keyword-only parameters are
config entries (``backbone_keys``); the training loop passes exactly those, by name, from
its model settings, so a renamed parameter fails loudly instead of falling back to a
default. ``build_backbone`` fills the entries a caller leaves out from
``module/defaults.py`` and refuses unknown ones.

The built-in backbones are imported on first use, so importing this module (and
``module.defaults``) loads no framework.
"""
from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Callable

from module.defaults import model_defaults

if TYPE_CHECKING:
    from torch import nn

BUILTIN = ("module.stgcn", "module.shiftgcn", "module.ctrgcn")  # modules whose import registers a backbone
_BACKBONES: dict[str, Callable[..., "nn.Module"]] = {}


def register_backbone(name: str) -> Callable:
    def deco(factory: Callable[..., "nn.Module"]) -> Callable[..., "nn.Module"]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        params = inspect.signature(factory).parameters.values()
        if any(p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty
               for p in params):
            raise TypeError(f"backbone {name!r}: a factory takes keyword-only parameters without defaults "
                            "(defaults live in module/defaults.py)")
        _BACKBONES[name] = factory
        return factory

    return deco


def _registered() -> dict[str, Callable[..., "nn.Module"]]:
    for mod in BUILTIN:
        importlib.import_module(mod)
    return _BACKBONES


def list_backbones() -> list[str]:
    return sorted(_registered())


def _factory(name: str) -> Callable[..., "nn.Module"]:
    try:
        return _registered()[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {list_backbones()}") from None


def backbone_keys(name: str) -> tuple[str, ...]:
    """The config entries backbone ``name`` is built from (its factory's parameters)."""
    return tuple(inspect.signature(_factory(name)).parameters)


def build_backbone(name: str, **entries) -> "nn.Module":
    """Backbone ``name`` from its entries; the ones left out take their defaults (``module/defaults.py``)."""
    keys = backbone_keys(name)
    unknown = sorted(set(entries) - set(keys))
    if unknown:
        raise TypeError(f"backbone {name!r} takes no entries {unknown}; it takes {list(keys)}")
    defaults = model_defaults(name)
    return _factory(name)(**{k: entries[k] if k in entries else defaults[k] for k in keys})
