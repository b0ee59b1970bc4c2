"""What the speed tools run and count: a worker's configuration (``Spec``), the model and the
one-step closures it times (training, evaluation, the ceiling convolution), FLOP counting
with torch's counter (one correction: every convolution gradient counts one forward's
FLOPs), and a description of the CPU. Shared by ``benchmark`` and ``breakdown``."""
from __future__ import annotations

import math
import os
import platform
import resource
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

FRAMES = {"stgcn": 50, "shiftgcn": 64}
PERSONS, JOINTS, TEXT_DIM, CLASSES = 2, 25, 768, 40


@dataclass
class Spec:
    """One worker's configuration."""

    kind: str                       # "train" | "eval" | "ceiling" | "epoch"
    backbone: str = "stgcn"
    formulation: str = "fast"
    batch: int = 32
    malloc: str = "mimalloc"        # an allocator of experiments/runtime.py, or "env:K=V,..." (a trial)
    bf16: bool = False
    device: str = "cpu"
    tiny: bool = False              # small widths and frames (the smoke test)
    epoch_samples: int = 0          # kind "epoch": samples of the resident training tensor
    label: str = ""

    def name(self) -> str:
        if self.label:
            return self.label
        if self.kind == "ceiling":
            return "conv ceiling"
        extra = " bf16" if self.bf16 else ""
        return f"{self.backbone} {self.kind} b{self.batch} {self.formulation} malloc={self.malloc}{extra}"


# ----------------------------------------------------------------------------- worker side

def make_model(spec: Spec, device: torch.device):
    from module import build_backbone
    from module.head import SkeletonTextModel

    kw = {"formulation": spec.formulation}
    if spec.backbone == "shiftgcn":
        kw["shift_impl"] = "ref" if spec.formulation == "plain" else "auto"
    if spec.tiny:
        kw.update(hidden_channels=4, out_channels=16)
    return SkeletonTextModel(build_backbone(spec.backbone, **kw), TEXT_DIM).to(device)


def frames_of(spec: Spec) -> int:
    return 16 if spec.tiny else FRAMES[spec.backbone]


def autocast_of(spec: Spec, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.bf16)


def train_step(spec: Spec, device: torch.device):
    """A closure running one training step."""
    from module.losses import get_loss

    torch.manual_seed(0)
    model = make_model(spec, device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(spec.batch, 3, frames_of(spec), JOINTS, PERSONS, device=device)
    y = torch.randint(0, CLASSES, (spec.batch,), device=device)
    text = torch.randn(CLASSES, TEXT_DIM, device=device)
    loss_fn = get_loss("kl")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast_of(spec, device):
            emb = model(x)
        loss_fn(emb.float(), text[y], y, model.scale()).backward()
        opt.step()

    return step


def eval_step(spec: Spec, device: torch.device):
    """A closure running one evaluation forward pass."""
    torch.manual_seed(0)
    model = make_model(spec, device).eval()
    x = torch.randn(spec.batch, 3, frames_of(spec), JOINTS, PERSONS, device=device)

    @torch.no_grad()
    def step():
        with autocast_of(spec, device):
            model(x)

    return step


def ceiling_step(device: torch.device, tiny: bool):
    """Forward + backward of the 256 -> 256, 9 x 1 convolution at (256, 256, 13, 25), best layout."""
    n, c, t = (8, 32, 13) if tiny else (256, 256, 13)
    conv = torch.nn.Conv2d(c, c, (9, 1), padding=(4, 0)).to(device)
    layouts = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(n, c, t, JOINTS, device=device).to(memory_format=fmt).requires_grad_(True)
        g = torch.randn(n, c, t, JOINTS, device=device).to(memory_format=fmt)
        layouts[fmt] = (x, g)
    flops = 3 * 2 * c * c * 9 * n * t * JOINTS  # forward; input and weight gradients: 2x more

    def run(fmt):
        x, g = layouts[fmt]
        x.grad = None
        conv.zero_grad(set_to_none=True)
        conv(x).backward(g)

    return run, list(layouts), flops


def conv_flops(out_numel: int, weight_shape, passes: int = 1) -> int:
    """FLOPs (2 per multiply-add) of a convolution with this many outputs and this weight shape
    ``(C_out, C_in / groups, *kernel)``; each gradient of its backward (input, weight) costs one more pass."""
    return 2 * out_numel * math.prod(weight_shape[1:]) * passes


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    # torch's own formula (torch.utils.flop_counter, 2.13) counts the weight gradient of a grouped
    # convolution `groups` times over (a depthwise convolution's by the number of channels)
    if transposed:
        return conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                                  output_padding, groups, output_mask, out_shape)
    return conv_flops(math.prod(grad_out_shape), w_shape, int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` with grouped convolutions' backward counted correctly."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def count_flops(fn) -> int:
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def cpu_description() -> str:
    """The CPU and the vector width the kernels use (ratios to the ceiling depend on it)."""
    text = f"{platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()}"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return text + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
