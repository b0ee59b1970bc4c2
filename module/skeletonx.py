"""SkeletonX's cross-sample feature aggregation (zzysteve/SkeletonX: ``model/stdecouple.py``,
``feeders/feeder_ntu_subject.py``), for data-efficient supervised training.

* ``DecoupleClassifier``: the backbone's last feature map ``(N·M, C, T, V)`` is split into a
  performer ("subject") feature, the mean over time through a 1×1 conv ``C → C/2`` + BN + ReLU,
  pooled over joints, and an action feature, the mean over joints through its own 1×1 conv +
  BN + ReLU, pooled over time; their concatenation ``[subject, action]`` (averaged over persons)
  goes to the classifier (``DecoupleClassifier``) or the text head (``DecoupleTextModel``). This
  is also the model at test time.
* ``pair_partners``: for every training sample, a partner with the same action and another
  performer (SADP) and one with another action and the same performer (DASP), drawn from the
  whole training set; where none exists, SkeletonX's fallback (SADP: the same performer; DASP:
  the same action).
* Training only, the aggregated features ``[subject_partner, action_self]`` (labelled with the
  sample's action) and ``[subject_self, action_partner]`` (the partner's action) are classified
  too (``experiments/train/objectives.py``: ``aggregation_objective``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from module.head import EncoderModel, InputStream, SkeletonTextModel, last_map


def _branch(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels // 2, 1), nn.BatchNorm2d(channels // 2), nn.ReLU(inplace=True))


class DecoupledFeatures:
    """The performer / action decoupling of a model with ``backbone`` and ``stream`` (module docstring);
    ``from_parts(subject, action)`` is the model's output for a (possibly swapped) pair."""

    def _add_branches(self, width: int) -> int:
        if width < 2:
            raise ValueError(f"SkeletonX's decoupling halves the backbone's {width} channels; it needs at least 2")
        self.subject_branch = _branch(width)
        self.action_branch = _branch(width)
        return 2 * (width // 2)

    def decouple(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C/2)`` performer and action features of ``x`` ``(N, C, T, V, M)``."""
        with last_map(self.backbone) as maps:
            self.backbone(self.stream(x))
        fmap = maps[-1]  # (N·M, C, T', V)
        subject = self.subject_branch(fmap.mean(dim=2, keepdim=True)).mean(dim=(2, 3))  # over V
        action = self.action_branch(fmap.mean(dim=3, keepdim=True)).mean(dim=(2, 3))  # over T'
        n = x.shape[0]
        return subject.view(n, -1, subject.shape[1]).mean(dim=1), action.view(n, -1, action.shape[1]).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_parts(*self.decouple(x))


class DecoupleClassifier(DecoupledFeatures, EncoderModel):
    """Backbone → (performer, action) features → linear classifier (the supervised track)."""

    def __init__(self, backbone: nn.Module, num_classes: int, stream: InputStream | None = None):
        super().__init__()
        self.stream = stream or InputStream()
        self.backbone = backbone
        self.fc = nn.Linear(self._add_branches(backbone.out_dim), num_classes)
        self.num_classes = num_classes

    def from_parts(self, subject: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([subject, action], dim=1))


class DecoupleTextModel(DecoupledFeatures, SkeletonTextModel):
    """Backbone → (performer, action) features → linear head into the text space (the zero-shot and
    one-shot tracks); the temperature as ``SkeletonTextModel``'s."""

    def __init__(self, backbone: nn.Module, text_dim: int, **kwargs):
        super().__init__(backbone, text_dim, **kwargs)
        self.head = nn.Linear(self._add_branches(backbone.out_dim), text_dim)

    def from_parts(self, subject: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([subject, action], dim=1))


def pair_partners(labels: np.ndarray, performers: np.ndarray, idx: np.ndarray, choose=np.random.choice
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """SADP and DASP partners (indices into ``labels``) of the samples ``idx``, and how many fell back.

    SADP: same action, another performer (fallback: the same performer and action, possibly the
    sample itself). DASP: the same performer, another action (fallback: the same action).
    ``choose(candidates)`` picks one index (default: NumPy's global generator, which the run seeds
    and its resume state restores).
    """
    sadp, dasp = np.empty(len(idx), np.int64), np.empty(len(idx), np.int64)
    fallback = {"sadp_same_performer": 0, "dasp_same_action": 0}
    for j, i in enumerate(idx):
        same_action, same_performer = labels == labels[i], performers == performers[i]
        cand = np.flatnonzero(same_action & ~same_performer)
        if not len(cand):
            fallback["sadp_same_performer"] += 1
            cand = np.flatnonzero(same_action & same_performer)
        sadp[j] = choose(cand)
        cand = np.flatnonzero(same_performer & ~same_action)
        if not len(cand):
            fallback["dasp_same_action"] += 1
            cand = np.flatnonzero(same_action)
        dasp[j] = choose(cand)
    return sadp, dasp, fallback
