// CUDA kernels of the Shift-GCN temporal shift (semantics: docs/SHIFT_OP.md,
// module/shift/reference.py is the spec they are tested against).
//
// x is (N, C, H, W), H = time, W = joints; X, Y are the per-channel effective positions
// (the caller has already added the +0.5 of a strided shift). Positions and weights are
// computed in the op-math type (float for float/half/bfloat16, double for double); the
// integer corner is floor() taken in float32, as the original kernel's floorf.
//
// Differences from the original kernel, all deliberate:
//  * the input gradient uses the forward's own corner weights (the exact transpose)
//    instead of re-deriving them from -X, -Y, and handles any stride;
//  * the position gradient is reduced deterministically per channel (block partials in a
//    fixed order) and returned as raw sums; the batch mean and the original's constraint
//    are applied by the caller (module/shift/op.py), shared with the reference;
//  * 64-bit indexing, the current stream, half/bfloat16 support, no deprecated API.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "shift_math.h"

namespace {

using pgfa_shift::Corner;
using pgfa_shift::corner_of;

constexpr int kThreads = 256;

template <typename scalar_t, typename opmath_t>
__global__ void shift_forward_kernel(const scalar_t* __restrict__ x, const opmath_t* __restrict__ X,
                                     const opmath_t* __restrict__ Y, scalar_t* __restrict__ out,
                                     int64_t N, int64_t C, int64_t H, int64_t W, int64_t H_out,
                                     int64_t stride) {
  const int64_t total = N * C * H_out * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t w = i % W;
    const int64_t h = (i / W) % H_out;
    const int64_t nc = i / (W * H_out);  // n * C + c
    const int64_t c = nc % C;
    const Corner<opmath_t> k = corner_of(X[c], Y[c]);
    out[i] = static_cast<scalar_t>(pgfa_shift::forward_at<scalar_t, opmath_t>(x + nc * H * W, k, h, w, H, W, stride));
  }
}

template <typename scalar_t, typename opmath_t>
__global__ void shift_input_grad_kernel(const scalar_t* __restrict__ g, const opmath_t* __restrict__ X,
                                        const opmath_t* __restrict__ Y, scalar_t* __restrict__ grad,
                                        int64_t N, int64_t C, int64_t H, int64_t W, int64_t H_out,
                                        int64_t stride) {
  const int64_t total = N * C * H * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t j = i % W;
    const int64_t row = (i / W) % H;
    const int64_t nc = i / (W * H);
    const int64_t c = nc % C;
    const Corner<opmath_t> k = corner_of(X[c], Y[c]);
    grad[i] = static_cast<scalar_t>(
        pgfa_shift::input_grad_at<scalar_t, opmath_t>(g + nc * H_out * W, k, row, j, H_out, W, stride));
  }
}

// Per (channel, chunk): partial sums over (n, h, w) of g * d out/dX and g * d out/dY.
// Each block reduces in a fixed order, so the result is deterministic (no atomics).
template <typename scalar_t, typename opmath_t>
__global__ void shift_position_partials_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                                               const opmath_t* __restrict__ X, const opmath_t* __restrict__ Y,
                                               opmath_t* __restrict__ part_x, opmath_t* __restrict__ part_y,
                                               int64_t N, int64_t C, int64_t H, int64_t W, int64_t H_out,
                                               int64_t stride) {
  __shared__ opmath_t sx[kThreads];
  __shared__ opmath_t sy[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t chunks = gridDim.y;
  const int64_t L = H_out * W;
  const int64_t total = N * L;
  const Corner<opmath_t> k = corner_of(X[c], Y[c]);
  opmath_t acc_x = 0, acc_y = 0;
  for (int64_t e = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(blockDim.x) * chunks) {
    const int64_t n = e / L;
    const int64_t l = e % L;
    opmath_t d_x, d_y;
    pgfa_shift::position_terms_at<scalar_t, opmath_t>(x + (n * C + c) * H * W, k, l / W, l % W, H, W, stride,
                                                      &d_x, &d_y);
    const opmath_t gv = static_cast<opmath_t>(g[(n * C + c) * L + l]);
    acc_x += gv * d_x;
    acc_y += gv * d_y;
  }
  sx[threadIdx.x] = acc_x;
  sy[threadIdx.x] = acc_y;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      sx[threadIdx.x] += sx[threadIdx.x + half];
      sy[threadIdx.x] += sy[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    part_x[c * chunks + blockIdx.y] = sx[0];
    part_y[c * chunks + blockIdx.y] = sy[0];
  }
}

at::ScalarType opmath_scalar(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_inputs(const at::Tensor& x, const at::Tensor& X, const at::Tensor& Y, int64_t stride,
                  const char* what) {
  TORCH_CHECK(x.is_cuda(), what, ": expected a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.dim() == 4, what, ": expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), what, ": expected a contiguous tensor");
  TORCH_CHECK(stride >= 1, what, ": stride must be >= 1, got ", stride);
  const auto pos_type = opmath_scalar(x.scalar_type());
  for (const at::Tensor* p : {&X, &Y}) {
    TORCH_CHECK(p->is_cuda() && p->device() == x.device(), what, ": positions must be on ", x.device());
    TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1), what, ": positions must have shape (", x.size(1),
                "), got ", p->sizes());
    TORCH_CHECK(p->scalar_type() == pos_type, what, ": positions must be ", pos_type, " for ",
                x.scalar_type(), " input, got ", p->scalar_type());
  }
}

int64_t blocks_for(int64_t total) {
  // A grid-stride loop covers the rest; cap the grid so it stays well inside limits.
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535LL * 8));
}

}  // namespace

at::Tensor shift_forward_cuda(const at::Tensor& x_in, const at::Tensor& X_in, const at::Tensor& Y_in,
                              int64_t stride) {
  const at::Tensor x = x_in.contiguous(), X = X_in.contiguous(), Y = Y_in.contiguous();
  check_inputs(x, X, Y, stride, "temporal shift forward");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), H_out = H / stride;
  at::Tensor out = at::empty({N, C, H_out, W}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shift_forward_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    shift_forward_kernel<scalar_t, opmath_t><<<blocks_for(total), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), X.const_data_ptr<opmath_t>(), Y.const_data_ptr<opmath_t>(),
        out.mutable_data_ptr<scalar_t>(), N, C, H, W, H_out, stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor shift_input_grad_cuda(const at::Tensor& g_in, const at::Tensor& X_in, const at::Tensor& Y_in,
                                 int64_t stride, int64_t height) {
  const at::Tensor g = g_in.contiguous(), X = X_in.contiguous(), Y = Y_in.contiguous();
  check_inputs(g, X, Y, stride, "temporal shift input gradient");
  TORCH_CHECK(height / stride == g.size(2), "temporal shift input gradient: height ", height, " / stride ",
              stride, " must equal the gradient's H_out ", g.size(2));
  const c10::cuda::CUDAGuard guard(g.device());
  const int64_t N = g.size(0), C = g.size(1), H_out = g.size(2), W = g.size(3);
  at::Tensor grad = at::empty({N, C, height, W}, g.options());
  const int64_t total = grad.numel();
  if (total == 0) return grad;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "shift_input_grad_cuda", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    shift_input_grad_kernel<scalar_t, opmath_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), X.const_data_ptr<opmath_t>(), Y.const_data_ptr<opmath_t>(),
        grad.mutable_data_ptr<scalar_t>(), N, C, height, W, H_out, stride);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad;
}

std::vector<at::Tensor> shift_position_sums_cuda(const at::Tensor& x_in, const at::Tensor& g_in,
                                                 const at::Tensor& X_in, const at::Tensor& Y_in, int64_t stride) {
  const at::Tensor x = x_in.contiguous(), g = g_in.contiguous(), X = X_in.contiguous(), Y = Y_in.contiguous();
  check_inputs(x, X, Y, stride, "temporal shift position gradient");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), H_out = H / stride;
  TORCH_CHECK(g.is_cuda() && g.device() == x.device() && g.scalar_type() == x.scalar_type(),
              "temporal shift position gradient: grad_output must match the input's device and dtype");
  TORCH_CHECK(g.dim() == 4 && g.size(0) == N && g.size(1) == C && g.size(2) == H_out && g.size(3) == W,
              "temporal shift position gradient: grad_output must be ", at::IntArrayRef({N, C, H_out, W}),
              ", got ", g.sizes());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto pos_opts = X.options();
  const int64_t per_channel = N * H_out * W;
  // Enough blocks per channel to fill the GPU when C is small; each does >= 8 elements per thread.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(64, per_channel / (kThreads * 8)));
  at::Tensor part_x = at::zeros({C, chunks}, pos_opts);
  at::Tensor part_y = at::zeros({C, chunks}, pos_opts);
  if (per_channel > 0 && C > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(chunks));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "shift_position_sums_cuda", [&] {
      using opmath_t = at::opmath_type<scalar_t>;
      shift_position_partials_kernel<scalar_t, opmath_t><<<grid, kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), X.const_data_ptr<opmath_t>(),
          Y.const_data_ptr<opmath_t>(), part_x.mutable_data_ptr<opmath_t>(), part_y.mutable_data_ptr<opmath_t>(),
          N, C, H, W, H_out, stride);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // A fixed-shape reduction over the chunk axis: deterministic.
  return {part_x.sum(1), part_y.sum(1)};
}
