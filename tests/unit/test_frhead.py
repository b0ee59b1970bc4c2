"""FR-Head: the calibrated prototype loss on hand cases, the prototype memory, the level
capture on every registered backbone, and gradients into backbone and head."""
import math

import pytest
import torch
from torch import nn

from module import backbone_keys, build_backbone, list_backbones
from module.frhead import FRHead, PrototypeContrast, capture_stages, stage_channels, stage_modules, stage_shapes

TINY = {"stgcn": dict(hidden_channels=4, out_channels=16),
        "shiftgcn": dict(hidden_channels=4, out_channels=16, shift_impl="ref")}
TINY_OTHER = dict(hidden_channels=8, out_channels=32)  # a backbone registered later (ctrgcn)


def _tiny(name: str, persons: int = 2) -> nn.Module:
    entries = {**TINY.get(name, TINY_OTHER), "num_person": persons}
    return build_backbone(name, **{k: v for k, v in entries.items() if k in backbone_keys(name)})


def _identity_(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features, linear.in_features))
        linear.bias.zero_()


def _reference_loss(z, labels, logits, memory, *, alpha=0.125, tau=0.125, momentum=0.9):
    """The original's loss ("V0", threshold 0) written out sample by sample, class by class.
    Returns (loss, updated memory)."""
    n, k = logits.shape
    probs = logits.softmax(1)
    pred = logits.argmax(1)
    unit = lambda v: v / (v.norm() + 1e-12)  # noqa: E731
    memory = memory.clone()
    for c in range(k):
        tp = [i for i in range(n) if labels[i] == c and pred[i] == c]
        if tp:
            memory[c] = momentum * memory[c] + (1 - momentum) * sum(z[i] for i in tp) / len(tp)
    fn = {c: [i for i in range(n) if labels[i] == c and pred[i] != c] for c in range(k)}
    fp = {c: [i for i in range(n) if pred[i] == c and labels[i] != c] for c in range(k)}
    total = 0.0
    for i in range(n):
        y = int(labels[i])
        zi = unit(z[i])
        cos = torch.stack([unit(memory[c]) @ zi for c in range(k)])
        w = alpha * (1 - probs[i, y])
        s_fn, s_fp = cos.clone(), cos.clone()
        if fn[y]:
            s_fn[y] = s_fn[y] + w * (unit(sum(z[j] for j in fn[y]) / len(fn[y])) @ zi - 1)
        if fp[y]:
            s_fp[y] = s_fp[y] + w * (-(unit(sum(z[j] for j in fp[y]) / len(fp[y])) @ zi) - 1)
        for s in (s_fn / tau, s_fp / tau):
            total = total + torch.logsumexp(s, 0) - s[y]
    return total / n, memory


def _hand_case():
    # s0: class 0, right; s1: class 0 predicted 1 (FN of 0, FP of 1); s2, s3: class 1, right
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)], [0.0, math.log(3)], [0.0, math.log(4)]])
    memory = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    return z, labels, logits, memory


def test_loss_on_a_hand_computed_case():
    z, labels, logits, memory = _hand_case()
    net = PrototypeContrast(2, 2, hidden=2)
    _identity_(net.proj)
    net.prototypes.copy_(memory)
    loss = net(z, labels, logits)

    # prototypes: 0.9 · old + 0.1 · mean of the correct samples, then unit length
    m0 = torch.tensor([1.0, 0.9])       # 0.9·(1, 1) + 0.1·(1, 0)
    m1 = torch.tensor([0.05, -0.75])    # 0.9·(0, -1) + 0.1·mean((0, 2), (1, 1))
    m0, m1 = m0 / math.sqrt(1.81), m1 / math.sqrt(0.565)
    zu = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0]),
          torch.tensor([1.0, 1.0]) / math.sqrt(2)]
    fn0 = torch.tensor([0.0, 1.0])      # class 0's false negatives: s1; class 1 has none
    fp1 = torch.tensor([0.0, 1.0])      # predicted 1 but of class 0: s1; class 0 has none
    a, tau = 0.125, 0.125
    p_y = [0.75, 0.25, 0.75, 0.8]       # softmax probability of the true class
    ce = lambda s, y: (torch.logsumexp(s / tau, 0) - s[y] / tau)  # noqa: E731
    terms = []
    for i, y in enumerate([0, 0, 1, 1]):
        cos = torch.stack([m0 @ zu[i], m1 @ zu[i]])
        s_fn, s_fp = cos.clone(), cos.clone()
        w = a * (1 - p_y[i])
        if y == 0:   # class 0: a false negative, no false positive
            s_fn[0] = cos[0] + w * (fn0 @ zu[i] - 1)
        else:        # class 1: a false positive, no false negative
            s_fp[1] = cos[1] + w * (-(fp1 @ zu[i]) - 1)
        terms.append(ce(s_fn, y) + ce(s_fp, y))
    expected = sum(terms) / 4
    # spot values of the calibration: s0's FN shift is 0.125·0.25·(0 - 1); s2's FP shift 0.125·0.25·(-1 - 1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(net.prototypes, torch.tensor([[1.0, 0.9], [0.05, -0.75]]))
    ref, _ = _reference_loss(z, labels, logits, memory)
    torch.testing.assert_close(ref, expected)


def test_prototype_memory_update():
    # 3 classes, threshold 0.7: a (class 0, right, p=0.9) counts; b (class 0, right, p=0.6) does not;
    # c (class 1 predicted 2) is no true positive; class 2 has no sample
    feats = torch.tensor([[2.0, 0.0], [0.0, 4.0], [6.0, 6.0]])
    labels = torch.tensor([0, 0, 1])
    logits = torch.tensor([[math.log(18), 0.0, 0.0], [math.log(3), 0.0, 0.0], [0.0, 0.0, math.log(2)]])
    old = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    net = PrototypeContrast(2, 3, hidden=2, pred_threshold=0.7)
    _identity_(net.proj)
    net.prototypes.copy_(old)
    net(feats, labels, logits)
    expected = torch.tensor([[0.9 * 1 + 0.1 * 2, 0.9 * 1 + 0.1 * 0], [2.0, 2.0], [3.0, 3.0]])
    torch.testing.assert_close(net.prototypes, expected)

    # threshold 0 (the original's): both class-0 samples count
    net = PrototypeContrast(2, 3, hidden=2)
    _identity_(net.proj)
    net.prototypes.copy_(old)
    net(feats, labels, logits)
    torch.testing.assert_close(net.prototypes[0], 0.9 * old[0] + 0.1 * torch.tensor([1.0, 2.0]))

    # eval mode leaves the memory alone; the memory is a buffer (state_dict, .to())
    before = net.prototypes.clone()
    net.eval()(feats, labels, logits)
    torch.testing.assert_close(net.prototypes, before)
    assert "prototypes" in net.state_dict() and "prototypes" not in dict(net.named_parameters())
    assert net.double().prototypes.dtype == torch.float64


def test_frhead_level_by_hand():
    # one level, C=2, T=2, V=2, M=2, hidden 4: the squeezes keep 4 // 2 = 2 channels, flatten to 4
    torch.manual_seed(0)
    n, m, c, t, v = 4, 2, 2, 2, 2
    x = torch.randn(n * m, c, t, v)
    labels = torch.tensor([0, 1, 1, 0])
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.0, 1.0], [0.2, 0.3]])
    head = FRHead([c], 2, stage_frames=[t], num_joints=v, level_weights=(0.5,), hidden=4)
    level = head.levels[0]
    memories = {}
    for name in ("spatial", "temporal"):
        squeeze = getattr(level, f"{name}_squeeze")
        with torch.no_grad():
            squeeze[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            squeeze[0].bias.zero_()
        _identity_(getattr(level, name).proj)
        memories[name] = getattr(level, name).prototypes.clone()
    loss = head([x], m, logits, labels)

    xs = x.view(n, m, c, t, v)
    def squeeze(p):  # identity conv, BatchNorm with batch statistics, ReLU  # noqa: E306
        mu = p.mean(dim=(0, 2, 3), keepdim=True)
        var = p.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return ((p - mu) / torch.sqrt(var + 1e-5)).clamp_min(0)
    spatial = squeeze(xs.mean(dim=(1, 3)).unsqueeze(2)).reshape(n, c * v)     # (N, [c, v])
    temporal = squeeze(xs.mean(dim=(1, 4)).unsqueeze(3)).reshape(n, c * t)    # (N, [c, t])
    ls, ms = _reference_loss(spatial, labels, logits, memories["spatial"])
    lt, mt = _reference_loss(temporal, labels, logits, memories["temporal"])
    torch.testing.assert_close(loss, 0.5 * (ls + lt))
    torch.testing.assert_close(level.spatial.prototypes, ms)
    torch.testing.assert_close(level.temporal.prototypes, mt)


@pytest.mark.parametrize("name", list_backbones())
def test_capture_stages(name):
    torch.manual_seed(0)
    net = _tiny(name)
    x = torch.randn(2, 3, 16, 25, 2)
    with capture_stages(net) as maps:
        net(x)
    assert len(maps) == 4
    assert [f.shape[1] for f in maps] == stage_channels(net)
    assert [f.shape[0] for f in maps] == [4] * 4  # N·M
    assert stage_shapes(net, x[:1]) == [tuple(f.shape[1:]) for f in maps]
    assert all(not mod._forward_hooks for mod in stage_modules(net))
    with pytest.raises(KeyError), capture_stages(net):
        raise KeyError("boom")
    assert all(not mod._forward_hooks for mod in stage_modules(net))


def test_gradients_reach_backbone_and_head():
    torch.manual_seed(0)
    net = _tiny("stgcn", persons=2)
    x = torch.randn(6, 3, 16, 25, 2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    classifier = nn.Linear(net.out_dim, 3)
    head = FRHead.for_backbone(net, x[:1], 3, hidden=64)
    assert net.training  # the probe restored the mode
    with capture_stages(net) as maps:
        logits = classifier(net(x))
    loss = head(maps, 2, logits, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for module in (net, head):
        missing = [k for k, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
                   or p.grad.abs().sum() == 0]
        assert not missing, f"parameters without a gradient: {missing}"
    assert classifier.weight.grad is None  # the logits only select samples


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        FRHead([4], 2, stage_frames=[4], num_joints=4, level_weights=(1.0,), hidden=8, mode="Multi-Level")
