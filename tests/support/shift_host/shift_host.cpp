// Test harness, not part of the op: runs the CUDA kernels' per-element code
// (module/shift/csrc/shift_math.h) on the host, one loop per kernel, so tests can check
// the exact arithmetic the GPU runs against the reference without a GPU.
#include <torch/extension.h>

#include <tuple>

#include "shift_math.h"

namespace {

using pgfa_shift::Corner;
using pgfa_shift::corner_of;

template <typename scalar_t>
void check(const at::Tensor& t, const at::Tensor& X, const at::Tensor& Y) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(), "host harness: contiguous CPU (N,C,H,W)");
  TORCH_CHECK(X.scalar_type() == t.scalar_type() && Y.scalar_type() == t.scalar_type(),
              "host harness: positions must have the input's dtype (float32 or float64)");
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& X, const at::Tensor& Y, int64_t stride) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), H_out = H / stride;
  at::Tensor out = at::empty({N, C, H_out, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "host_forward", [&] {
    check<scalar_t>(x, X, Y);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t c = nc % C;
      const Corner<scalar_t> k = corner_of(X.const_data_ptr<scalar_t>()[c], Y.const_data_ptr<scalar_t>()[c]);
      for (int64_t h = 0; h < H_out; ++h)
        for (int64_t w = 0; w < W; ++w)
          op[(nc * H_out + h) * W + w] = pgfa_shift::forward_at<scalar_t, scalar_t>(xp + nc * H * W, k, h, w, H, W, stride);
    }
  });
  return out;
}

at::Tensor input_grad(const at::Tensor& g, const at::Tensor& X, const at::Tensor& Y, int64_t stride, int64_t height) {
  const int64_t N = g.size(0), C = g.size(1), H_out = g.size(2), W = g.size(3);
  at::Tensor grad = at::empty({N, C, height, W}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "host_input_grad", [&] {
    check<scalar_t>(g, X, Y);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* out = grad.mutable_data_ptr<scalar_t>();
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t c = nc % C;
      const Corner<scalar_t> k = corner_of(X.const_data_ptr<scalar_t>()[c], Y.const_data_ptr<scalar_t>()[c]);
      for (int64_t row = 0; row < height; ++row)
        for (int64_t j = 0; j < W; ++j)
          out[(nc * height + row) * W + j] =
              pgfa_shift::input_grad_at<scalar_t, scalar_t>(gp + nc * H_out * W, k, row, j, H_out, W, stride);
    }
  });
  return grad;
}

std::tuple<at::Tensor, at::Tensor> position_sums(const at::Tensor& x, const at::Tensor& g, const at::Tensor& X,
                                                 const at::Tensor& Y, int64_t stride) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), H_out = H / stride;
  at::Tensor sum_x = at::zeros({C}, X.options()), sum_y = at::zeros({C}, X.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "host_position_sums", [&] {
    check<scalar_t>(x, X, Y);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.contiguous().const_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {
      const Corner<scalar_t> k = corner_of(X.const_data_ptr<scalar_t>()[c], Y.const_data_ptr<scalar_t>()[c]);
      double ax = 0, ay = 0;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t h = 0; h < H_out; ++h)
          for (int64_t w = 0; w < W; ++w) {
            scalar_t d_x, d_y;
            pgfa_shift::position_terms_at<scalar_t, scalar_t>(xp + (n * C + c) * H * W, k, h, w, H, W, stride, &d_x, &d_y);
            const double gv = gp[((n * C + c) * H_out + h) * W + w];
            ax += gv * d_x;
            ay += gv * d_y;
          }
      sum_x.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(ax);
      sum_y.mutable_data_ptr<scalar_t>()[c] = static_cast<scalar_t>(ay);
    }
  });
  return {sum_x, sum_y};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("input_grad", &input_grad);
  m.def("position_sums", &position_sums);
}
