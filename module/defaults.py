"""Default architecture entries of the backbones: the one place they are stated.

``config.py`` takes a run's model entries from here (a dataset or a track may override
them: ``data/catalog.py``, ``config.TRACK_DEFAULTS``), and ``build_backbone`` fills the
entries a caller leaves out from here. Plain data: importing it loads no framework.
"""
from __future__ import annotations

# Every architecture entry any backbone takes, with its value in the papers' configurations.
MODEL_DEFAULTS: dict[str, object] = {
    "in_channels": 3,             # coordinates per joint
    "hidden_channels": 16,        # width of the first blocks (ST-GCN in PGFA/SMIE)
    "out_channels": 256,          # the skeleton embedding before the projection head
    "dropout": 0.5,
    "graph_layout": "ntu25",      # a run takes its dataset's layout
    "graph_strategy": "spatial",
    "max_hop": 1,
    "edge_importance": True,
    "temporal_kernel": 9,
    "num_person": 2,              # a run takes its dataset's person count
    "shift_impl": "auto",         # Shift-GCN temporal shift: auto | cuda | dwconv | ref (module/shift)
    "shift_pos_grad": "constrained",
    "formulation": "fast",        # fast | plain: the same backbone math, straightforwardly formulated
}

# Where a backbone's published configuration differs from the table above.
BACKBONE_OVERRIDES: dict[str, dict[str, object]] = {
    "stgcn": {},
    "shiftgcn": {"hidden_channels": 64},  # the original's 64-64-64-64-128-...-256
    "ctrgcn": {"hidden_channels": 64, "dropout": 0.0},  # the paper's base width; its drop_out is 0
}


def model_defaults(backbone: str) -> dict[str, object]:
    """Every architecture entry with the value ``backbone`` uses by default."""
    return {**MODEL_DEFAULTS, **BACKBONE_OVERRIDES.get(backbone, {})}
