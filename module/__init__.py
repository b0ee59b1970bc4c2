"""Skeleton encoders, graph layouts, projection head, losses and test-time alignment."""
from module import shiftgcn, stgcn  # noqa: F401  (register "shiftgcn", "stgcn")
from module.registry import build_backbone, build_backbone_from_config, list_backbones, register_backbone

__all__ = ["build_backbone", "build_backbone_from_config", "list_backbones", "register_backbone"]
