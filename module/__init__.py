"""Skeleton encoders, graph layouts, projection head, losses and test-time alignment.

Importing the package loads no framework: the backbones register themselves when the
registry first needs them (``module/registry.py``)."""
from module.registry import backbone_keys, build_backbone, list_backbones, register_backbone

__all__ = ["backbone_keys", "build_backbone", "list_backbones", "register_backbone"]
