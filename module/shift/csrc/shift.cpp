// Python bindings of the temporal-shift CUDA kernels (shift_kernel.cu). The interface
// mirrors module/shift/reference.py: forward, input_grad, position_sums.
#include <torch/extension.h>

#include <vector>

at::Tensor shift_forward_cuda(const at::Tensor& x, const at::Tensor& X, const at::Tensor& Y, int64_t stride);
at::Tensor shift_input_grad_cuda(const at::Tensor& g, const at::Tensor& X, const at::Tensor& Y, int64_t stride,
                                 int64_t height);
std::vector<at::Tensor> shift_position_sums_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& X,
                                                 const at::Tensor& Y, int64_t stride);

namespace {

std::tuple<at::Tensor, at::Tensor> position_sums(const at::Tensor& x, const at::Tensor& g, const at::Tensor& X,
                                                 const at::Tensor& Y, int64_t stride) {
  auto sums = shift_position_sums_cuda(x, g, X, Y, stride);
  return {sums[0], sums[1]};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Shift-GCN temporal shift, CUDA kernels (semantics: module/shift/reference.py)";
  m.def("forward", &shift_forward_cuda, "(N, C, H, W) -> (N, C, H // stride, W)", py::arg("x"), py::arg("X"),
        py::arg("Y"), py::arg("stride"));
  m.def("input_grad", &shift_input_grad_cuda, "exact transpose of forward: (N, C, H_out, W) -> (N, C, height, W)",
        py::arg("g"), py::arg("X"), py::arg("Y"), py::arg("stride"), py::arg("height"));
  m.def("position_sums", &position_sums, "sums over (n, h, w) of g * dout/dX and g * dout/dY, each (C,)",
        py::arg("x"), py::arg("g"), py::arg("X"), py::arg("Y"), py::arg("stride"));
}
