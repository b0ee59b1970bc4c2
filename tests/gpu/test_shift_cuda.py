"""The temporal-shift CUDA source: it compiles (nvcc, no GPU needed), its per-element
arithmetic matches the reference when compiled for the host (no GPU needed), and, where
a GPU exists, the built extension matches the reference (forward and every gradient).
"""
from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch

from module.shift import temporal_shift
from module.shift import reference
from module.shift.build import CSRC, SOURCES

ROOT = Path(__file__).resolve().parents[2]
HOST_HARNESS = ROOT / "tests" / "support" / "shift_host" / "shift_host.cpp"
TORCH_INCLUDE = Path(torch.__file__).resolve().parent / "include"
NVCC_FLAGS = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]  # what cpp_extension passes nvcc
CASES = [  # (shape, stride, xpos, ypos): even/odd T, strides 1/2, integer / fractional / out-of-range positions
    ((3, 4, 8, 5), 1, [0.0, 1.0, -1.0, 2.0], [0.0, 1.0, -2.0, 3.0]),
    ((3, 4, 9, 5), 1, [0.3, -0.7, 1.25, -1.6], [0.4, -1.3, 2.7, -0.2]),
    ((3, 4, 8, 5), 2, [0.3, -0.7, 1.25, -1.6], [0.4, -1.3, 2.7, -0.2]),
    ((3, 4, 9, 5), 2, [7.5, -9.2, 3e-9, -7e-9], [20.3, -15.0, 0.83, -0.97]),
]


def _case(shape, xpos, ypos, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    return x.to(device), torch.tensor(xpos, dtype=dtype, device=device), torch.tensor(ypos, dtype=dtype, device=device)


def _effective(X, Y, stride):
    return X, (Y + 0.5 if stride != 1 else Y)


# ----------------------------------------------------------------------------- no GPU needed

@pytest.mark.slow
def test_cuda_source_compiles_with_nvcc(tmp_path):
    """nvcc compiles the kernels and g++ the bindings against this torch's headers (objects only:
    linking needs the CUDA build of torch). sm_80 is accepted by every nvcc that supports the
    C++20 these headers need."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: cannot check that the CUDA source compiles")
    cxx = shutil.which("c++") or shutil.which("g++")
    py_include = Path(sysconfig.get_paths()["include"])
    if cxx is None or not (py_include / "Python.h").is_file():
        pytest.skip(f"no host C++ compiler ({cxx}) or no Python.h in {py_include}: cannot compile the bindings")
    includes = [f"-I{TORCH_INCLUDE}", f"-I{TORCH_INCLUDE / 'torch/csrc/api/include'}", f"-I{CSRC}"]
    macros = TORCH_INCLUDE / "c10/cuda/impl/cuda_cmake_macros.h"
    if not macros.is_file():
        # CPU wheels ship the c10/cuda headers but not this CMake-generated one; in CUDA
        # wheels it holds this single define.
        stub = tmp_path / "stub/c10/cuda/impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(f"-I{tmp_path / 'stub'}")
    kernel = next(p for p in SOURCES if p.suffix == ".cu")
    binding = next(p for p in SOURCES if p.suffix == ".cpp")
    jobs = {
        "nvcc": [nvcc, "-c", "-std=c++20", "-O3", "-arch=sm_80", *NVCC_FLAGS, *includes, str(kernel),
                 "-o", str(tmp_path / "kernel.o")],
        "c++": [cxx, "-c", "-std=c++20", "-O1", "-fPIC", *includes, f"-I{py_include}",
                "-DTORCH_EXTENSION_NAME=pgfa_shift_check", "-DTORCH_API_INCLUDE_EXTENSION_H", str(binding),
                "-o", str(tmp_path / "binding.o")],
    }
    procs = {k: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, cmd in jobs.items()}
    for name, p in procs.items():
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, f"{name} failed to compile the shift source:\n{out[-6000:]}"
    assert (tmp_path / "kernel.o").stat().st_size > 0 and (tmp_path / "binding.o").stat().st_size > 0


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory):
    """The kernels' per-element code (csrc/shift_math.h) compiled for the CPU."""
    if (shutil.which("c++") or shutil.which("g++")) is None:
        pytest.skip("no C++ compiler: cannot build the host harness of the kernel arithmetic")
    try:
        import ninja  # noqa: F401  (torch.utils.cpp_extension.load needs it)
    except ImportError:
        pytest.skip("ninja is not installed (pip install -r requirements.txt): cannot build the host harness")
    from torch.utils import cpp_extension

    build = tmp_path_factory.mktemp("shift_host")
    return cpp_extension.load(name="pgfa_shift_host", sources=[str(HOST_HARNESS)], extra_include_paths=[str(CSRC)],
                              extra_cflags=["-O1"], build_directory=str(build), with_cuda=False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape,stride,xpos,ypos", CASES)
def test_kernel_arithmetic_on_the_host_matches_the_reference(host_kernels, dtype, shape, stride, xpos, ypos):
    x, X, Y = _case(shape, xpos, ypos, dtype)
    X, Y = _effective(X, Y, stride)
    g = torch.randn(shape[0], shape[1], shape[2] // stride, shape[3], dtype=dtype)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(host_kernels.forward(x, X, Y, stride), reference.forward(x, X, Y, stride), **tol)
    torch.testing.assert_close(host_kernels.input_grad(g, X, Y, stride, shape[2]),
                               reference.input_grad(g, X, Y, stride, shape[2]), **tol)
    for got, want in zip(host_kernels.position_sums(x, g, X, Y, stride), reference.position_sums(x, g, X, Y, stride)):
        torch.testing.assert_close(got, want, **tol)


# ----------------------------------------------------------------------------- GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (parity of the built extension)")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,stride,xpos,ypos", CASES)
@pytest.mark.parametrize("pos_grad", ["constrained", "exact"])
def test_cuda_matches_reference(dtype, shape, stride, xpos, ypos, pos_grad):
    results = {}
    for impl, device in (("cuda", "cuda"), ("ref", "cpu")):
        x, xp, yp = _case(shape, xpos, ypos, dtype, device)
        x.requires_grad_(True)
        xp.requires_grad_(True)
        yp.requires_grad_(True)
        g = torch.randn(shape[0], shape[1], shape[2] // stride, shape[3], dtype=dtype,
                        generator=torch.Generator().manual_seed(1)).to(device)
        out = temporal_shift(x, xp, yp, stride, impl=impl, pos_grad=pos_grad)
        out.backward(g)
        results[impl] = [t.detach().cpu() for t in (out, x.grad, xp.grad, yp.grad)]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for name, got, want in zip(("output", "grad x", "grad xpos", "grad ypos"), results["cuda"], results["ref"]):
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


@cuda
def test_cuda_gradients_are_deterministic():
    x, xp, yp = _case((16, 64, 32, 25), [0.3] * 64, [0.4] * 64, torch.float32, "cuda")
    x.requires_grad_(True)
    xp.requires_grad_(True)
    yp.requires_grad_(True)
    grads = []
    for _ in range(2):
        x.grad = xp.grad = yp.grad = None
        temporal_shift(x, xp, yp, 2, impl="cuda", pos_grad="exact").square().sum().backward()
        grads.append([t.grad.clone() for t in (x, xp, yp)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision_close_to_float32(dtype):
    x, xp, yp = _case((4, 8, 16, 25), [0.3, -0.7] * 4, [0.4, -1.3] * 4, torch.float32, "cuda")
    want = temporal_shift(x, xp, yp, 2, impl="cuda")
    got = temporal_shift(x.to(dtype), xp, yp, 2, impl="cuda")
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@cuda
def test_shiftgcn_cuda_step_matches_reference():
    from module import build_backbone

    torch.manual_seed(0)
    nets = {impl: build_backbone("shiftgcn", hidden_channels=8, out_channels=32, num_person=2, shift_impl=impl).double()
            for impl in ("cuda", "ref")}
    nets["ref"].load_state_dict(nets["cuda"].state_dict())
    x = torch.randn(4, 3, 16, 25, 2, dtype=torch.float64)
    grads = {}
    for impl, net in nets.items():
        dev = "cuda" if impl == "cuda" else "cpu"
        net.to(dev)
        net(x.to(dev)).square().mean().backward()
        grads[impl] = {n: p.grad.cpu() for n, p in net.named_parameters()}
    for name in grads["ref"]:
        torch.testing.assert_close(grads["cuda"][name], grads["ref"][name], rtol=1e-8, atol=1e-10,
                                   msg=lambda m: f"{name}: {m}")
