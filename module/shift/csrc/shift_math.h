// Per-element arithmetic of the temporal shift, shared by the CUDA kernels
// (shift_kernel.cu) and a host build used by the tests (tests/shift_host/), so the exact
// code the GPU runs is also checked against the reference on machines without a GPU.
//
// Semantics: docs/SHIFT_OP.md; module/shift/reference.py is the spec.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SHIFT_HD __host__ __device__ __forceinline__
#else
#define SHIFT_HD inline
#endif

namespace pgfa_shift {

template <typename opmath_t>
struct Corner {
  int64_t x1, y1;   // integer corner: floor taken in float32, as the original's floorf
  opmath_t dx, dy;  // fractional parts, in the op-math type
};

template <typename opmath_t>
SHIFT_HD Corner<opmath_t> corner_of(opmath_t X, opmath_t Y) {
  Corner<opmath_t> k;
  k.x1 = static_cast<int64_t>(floorf(static_cast<float>(X)));
  k.y1 = static_cast<int64_t>(floorf(static_cast<float>(Y)));
  k.dx = X - static_cast<opmath_t>(k.x1);
  k.dy = Y - static_cast<opmath_t>(k.y1);
  return k;
}

// plane[r, c] of one (n, c) plane of height H and width W; zero outside.
template <typename scalar_t, typename opmath_t>
SHIFT_HD opmath_t tap(const scalar_t* plane, int64_t r, int64_t c, int64_t H, int64_t W) {
  return (r >= 0 && r < H && c >= 0 && c < W) ? static_cast<opmath_t>(plane[r * W + c]) : opmath_t(0);
}

// The four corners q11, q21, q12, q22 read for output (h, w).
template <typename scalar_t, typename opmath_t>
SHIFT_HD void corners_at(const scalar_t* plane, const Corner<opmath_t>& k, int64_t h, int64_t w, int64_t H,
                         int64_t W, int64_t stride, opmath_t q[4]) {
  const int64_t r1 = h * stride + k.y1, c1 = w + k.x1;
  q[0] = tap<scalar_t, opmath_t>(plane, r1, c1, H, W);
  q[1] = tap<scalar_t, opmath_t>(plane, r1, c1 + 1, H, W);
  q[2] = tap<scalar_t, opmath_t>(plane, r1 + 1, c1, H, W);
  q[3] = tap<scalar_t, opmath_t>(plane, r1 + 1, c1 + 1, H, W);
}

// out[h, w] = q11 (1-dx)(1-dy) + q21 dx (1-dy) + q12 (1-dx) dy + q22 dx dy.
template <typename scalar_t, typename opmath_t>
SHIFT_HD opmath_t forward_at(const scalar_t* plane, const Corner<opmath_t>& k, int64_t h, int64_t w, int64_t H,
                             int64_t W, int64_t stride) {
  opmath_t q[4];
  corners_at<scalar_t, opmath_t>(plane, k, h, w, H, W, stride, q);
  const opmath_t dx = k.dx, dy = k.dy;
  return q[0] * (1 - dx) * (1 - dy) + q[1] * dx * (1 - dy) + q[2] * (1 - dx) * dy + q[3] * dx * dy;
}

// The exact transpose: grad[row, j] = sum over corners (oy, ox) of weight * g[(row - y1 - oy) / s, j - x1 - ox]
// where that row is a non-negative multiple of the stride s below H_out * s.
template <typename scalar_t, typename opmath_t>
SHIFT_HD opmath_t input_grad_at(const scalar_t* gplane, const Corner<opmath_t>& k, int64_t row, int64_t j,
                                int64_t H_out, int64_t W, int64_t stride) {
  const opmath_t dx = k.dx, dy = k.dy;
  const opmath_t wts[4] = {(1 - dx) * (1 - dy), dx * (1 - dy), (1 - dx) * dy, dx * dy};
  const int oy[4] = {0, 0, 1, 1};
  const int ox[4] = {0, 1, 0, 1};
  opmath_t acc = 0;
  for (int t = 0; t < 4; ++t) {
    const int64_t src = row - k.y1 - oy[t];
    const int64_t col = j - k.x1 - ox[t];
    if (src < 0 || src % stride != 0 || col < 0 || col >= W) continue;
    const int64_t h = src / stride;
    if (h < H_out) acc += wts[t] * static_cast<opmath_t>(gplane[h * W + col]);
  }
  return acc;
}

// d out[h, w] / dX and d out[h, w] / dY (the original kernel's val_x, val_y).
template <typename scalar_t, typename opmath_t>
SHIFT_HD void position_terms_at(const scalar_t* plane, const Corner<opmath_t>& k, int64_t h, int64_t w, int64_t H,
                                int64_t W, int64_t stride, opmath_t* d_x, opmath_t* d_y) {
  opmath_t q[4];
  corners_at<scalar_t, opmath_t>(plane, k, h, w, H, W, stride, q);
  const opmath_t dx = k.dx, dy = k.dy;
  *d_x = (1 - dy) * (q[1] - q[0]) + dy * (q[3] - q[2]);
  *d_y = (1 - dx) * (q[2] - q[0]) + dx * (q[3] - q[1]);
}

}  // namespace pgfa_shift
