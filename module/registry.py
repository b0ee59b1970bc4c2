"""A small registry of skeleton backbones.

Every backbone maps a skeleton batch ``(N, C, T, V, M)`` to an ``(N, D)`` embedding
and exposes ``out_dim``.  A registered factory's parameter names are config keys, so
``build_backbone_from_config(name, cfg)`` hands each backbone exactly the entries it
declares; a new backbone is one decorated factory away.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping

from torch import nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = factory
        return factory

    return deco


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    try:
        factory = _BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; registered: {list_backbones()}") from None
    return factory(**kwargs)


def build_backbone_from_config(name: str, cfg: Mapping) -> nn.Module:
    """Build ``name`` with the config entries named like its factory's parameters."""
    if name not in _BACKBONES:
        build_backbone(name)  # raises the unknown-backbone error
    params = inspect.signature(_BACKBONES[name]).parameters
    return build_backbone(name, **{k: cfg[k] for k in params if k in cfg})
