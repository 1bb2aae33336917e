// Weight-only int8 / bf16 linear layers and embeddings for CPU decoding.
//
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] + bias[n], weight [N, K] (one output channel's K
// weights contiguous, so the tied LM head is the embedding table itself). Batch-1 decoding reads
// every weight once per token, so the kernels convert int8/bf16 to fp32 in registers and never
// write a dequantised copy; several activation rows share each converted weight vector (register
// tiles of MB rows x NB output channels) so prefill and batched decoding stay compute-efficient.
// On AVX-512 VNNI CPUs a second int8 kernel quantises the activations per row to u8 and uses
// vpdpbusd; see kVnniMinRows / kVnniMaxSpread for when it runs.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "weight_only_kernels.h"
#include "paddle/extension.h"

namespace {

using namespace pb_wo;  // NOLINT: the kernels are this file's implementation detail

// ---------------------------------------------------------------- tile tables per ISA
// Register budgets: AVX-512 has 32 registers (4x4 accumulators + 4 weights + 1 row), AVX2 16
// (3x4 accumulators + 4 weights; the row is a memory operand of the FMA).
struct Kernels {
  int MB, NB;
  TileFn tile[4][2];  // [rows - 1][0: NB channels, 1: a single channel]
};

#define PB_TILES(FN, WT, NB) \
  { {FN<WT, 1, NB>, FN<WT, 1, 1>}, {FN<WT, 2, NB>, FN<WT, 2, 1>}, {FN<WT, 3, NB>, FN<WT, 3, 1>}, {FN<WT, 4, NB>, FN<WT, 4, 1>} }

template <typename WT>
const Kernels& kernels_for(int isa) {
  static const Kernels scalar = {4, 4, PB_TILES(tile_scalar, WT, 4)};
  static const Kernels avx2 = {3, 4, PB_TILES(tile_avx2, WT, 4)};
  static const Kernels avx512 = {4, 4, PB_TILES(tile_avx512, WT, 4)};
  return isa >= PB_AVX512 ? avx512 : isa == PB_AVX2 ? avx2 : scalar;
}

// Threads for a call: one unless there is enough work to pay for waking the others.
int threads_for(int64_t M, int64_t N, int64_t K, int NB) {
  const int64_t work = M * N * K;
  int nt = work < (1 << 18) ? 1 : pb_num_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nt, (N + NB - 1) / NB)));
}

// Output channels [n0, n1) of thread t out of nt, in whole NB blocks.
inline void split(int64_t N, int NB, int t, int nt, int64_t* n0, int64_t* n1) {
  const int64_t blocks = (N + NB - 1) / NB;
  *n0 = std::min(N, blocks * t / nt * NB);
  *n1 = std::min(N, blocks * (t + 1) / nt * NB);
}

template <typename WT>
void linear_fp32(const float* x, int64_t M, int64_t K, const WT* w, const float* scale, const float* bias, int64_t N,
                 float* y, int isa) {
  const Kernels& kr = kernels_for<WT>(isa);
  const int MB = kr.MB, NB = kr.NB;
  // Rows per pass: keep the pass's activations in L2 (~256 KiB) while each weight tile is reused.
  const int64_t mc = std::max<int64_t>(MB, (256 * 1024 / (4 * K)) / MB * MB);
  const int nt = threads_for(M, N, K, NB);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int64_t n0, n1;
    split(N, NB, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    float acc[4 * 4];
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc);
      for (int64_t n = n0; n < n1;) {
        const int nb = n1 - n >= NB ? NB : 1;
        for (int64_t m = m0; m < m1; m += MB) {
          const int mb = static_cast<int>(std::min<int64_t>(MB, m1 - m));
          kr.tile[mb - 1][nb == 1](x + m * K, K, w + n * K, K, K, acc);
          for (int i = 0; i < mb; ++i)
            for (int j = 0; j < nb; ++j)
              y[(m + i) * N + n + j] = acc[i * nb + j] * (scale ? scale[n + j] : 1.f) + (bias ? bias[n + j] : 0.f);
        }
        n += nb;
      }
    }
  }
}

// The u8 code adds an error of ~range / (255 sqrt(12)) per element, i.e. spread / 883 of the
// output's RMS where spread = range / RMS of the row: ~0.75% for Gaussian rows (spread 6-8),
// <= 1.1% up to kVnniMaxSpread. Rows with outlier channels (BLOOM's hidden states have them;
// 2 channels at 40 sigma: spread ~21, 2.6% error) would lose too much, so a call containing one
// runs the fp32-activation kernel instead, unless VNNI is forced.
constexpr float kVnniMaxSpread = 10.f;

// Returns false (and writes nothing) when a row fails the guard.
bool linear_vnni(const float* x, int64_t M, int64_t K, const int8_t* w, const float* scale, const float* bias, int64_t N,
                 float* y, bool guarded) {
  constexpr int MB = 4, NB = 4;
  using VnniTile = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int32_t*);
#define PB_VNNI_ROW(MBv) {tile_vnni<MBv, NB, true>, tile_vnni<MBv, 1, true>, tile_vnni<MBv, NB, false>, tile_vnni<MBv, 1, false>}
  static const VnniTile tiles[4][4] = {PB_VNNI_ROW(1), PB_VNNI_ROW(2), PB_VNNI_ROW(3), PB_VNNI_ROW(4)};
#undef PB_VNNI_ROW
  std::vector<uint8_t> q(static_cast<size_t>(M * K));
  std::vector<float> step(M), lo(M), spread(M);
  for (int64_t m = 0; m < M; ++m) quantize_row_u8(x + m * K, K, q.data() + m * K, &step[m], &lo[m], &spread[m]);
  if (guarded && *std::max_element(spread.begin(), spread.end()) > kVnniMaxSpread) return false;
  const int64_t mc = std::max<int64_t>(MB, (256 * 1024 / K) / MB * MB);
  const int nt = threads_for(M, N, K, NB);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int64_t n0, n1;
    split(N, NB, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    int32_t acc[MB * NB];
    std::vector<int32_t> cs(static_cast<size_t>(n1 - n0));  // weight row sums, from the first pass
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc);
      for (int64_t n = n0; n < n1;) {
        const int nb = n1 - n >= NB ? NB : 1;
        for (int64_t m = m0; m < m1; m += MB) {
          const int mb = static_cast<int>(std::min<int64_t>(MB, m1 - m));
          tiles[mb - 1][(nb == 1) + 2 * (m > 0)](q.data() + m * K, K, w + n * K, K, K, acc, cs.data() + (n - n0));
          for (int i = 0; i < mb; ++i)
            for (int j = 0; j < nb; ++j)
              y[(m + i) * N + n + j] =
                  (static_cast<float>(acc[i * nb + j]) * step[m + i] + lo[m + i] * static_cast<float>(cs[n - n0 + j])) *
                      scale[n + j] + (bias ? bias[n + j] : 0.f);
        }
        n += nb;
      }
    }
  }
  return true;
}

// ---------------------------------------------------------------- op bodies
// Smallest M at which the VNNI kernel beats the fp32-activation kernel (measured on a 2-core
// Xeon with AVX-512 VNNI: equal at M=4, 1.4x at M=8 with weights from memory, 2-2.5x from M=16).
constexpr int64_t kVnniMinRows = 8;

// PADDLEBLOOM_ISA=vnni forces the VNNI kernel (any M, no guard: tests); unset, it runs where the
// CPU has VNNI, M >= kVnniMinRows and every row passes the outlier guard.
bool vnni_forced() {
  const char* want = std::getenv("PADDLEBLOOM_ISA");
  return want && std::strcmp(want, "vnni") == 0;
}
bool isa_forced() {
  const char* want = std::getenv("PADDLEBLOOM_ISA");
  return want && *want;
}

void check_linear(const paddle::Tensor& x, const paddle::Tensor& w, const paddle::optional<paddle::Tensor>& bias) {
  PD_CHECK(x.is_cpu() && w.is_cpu(), "weight_only_linear: CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "weight_only_linear: x must be float32");
  PD_CHECK(w.shape().size() == 2, "weight_only_linear: weight must be [N, K]");
  PD_CHECK(x.shape().back() == w.shape()[1], "weight_only_linear: x's last dim must equal weight.shape[1] (K)");
  if (bias) {
    PD_CHECK(bias->dtype() == paddle::DataType::FLOAT32 && bias->numel() == w.shape()[0],
             "weight_only_linear: bias must be float32 [N]");
  }
}

paddle::Tensor alloc_out(const paddle::Tensor& x, int64_t N) {
  std::vector<int64_t> shape = x.shape();
  shape.back() = N;
  return paddle::empty(shape, paddle::DataType::FLOAT32, x.place());
}

// Kernels index rows densely: a strided view (Paddle's transpose/slice in dygraph) is copied.
paddle::Tensor dense(const paddle::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

std::vector<paddle::Tensor> LinearInt8(const paddle::Tensor& x_in, const paddle::Tensor& weight,
                                       const paddle::Tensor& scale, const paddle::optional<paddle::Tensor>& bias) {
  const paddle::Tensor x = dense(x_in);
  check_linear(x, weight, bias);
  PD_CHECK(weight.is_contiguous(), "weight_only_linear_int8: weight must be contiguous");
  PD_CHECK(weight.dtype() == paddle::DataType::INT8, "weight_only_linear_int8: weight must be int8");
  const int64_t N = weight.shape()[0], K = weight.shape()[1], M = K ? x.numel() / K : 0;
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == N, "weight_only_linear_int8: scale must be float32 [N]");
  paddle::Tensor out = alloc_out(x, N);
  const float* b = bias ? bias->data<float>() : nullptr;
  const int isa = pb_isa();
  const bool vnni = isa == PB_VNNI && M > 0 && (vnni_forced() || (!isa_forced() && M >= kVnniMinRows));
  if (!vnni || !linear_vnni(x.data<float>(), M, K, weight.data<int8_t>(), scale.data<float>(), b, N, out.data<float>(),
                            !vnni_forced()))
    linear_fp32<int8_t>(x.data<float>(), M, K, weight.data<int8_t>(), scale.data<float>(), b, N, out.data<float>(), isa);
  return {out};
}

const uint16_t* bf16_bits(const paddle::Tensor& w, const char* op) {
  PD_CHECK(w.dtype() == paddle::DataType::BFLOAT16 || w.dtype() == paddle::DataType::UINT16,
           op, ": weight must be bfloat16 (or its bits as uint16)");
  return static_cast<const uint16_t*>(w.data());
}

// Unscaled weights [N, K] (bf16 bits or fp32), fp32 math.
template <typename WT>
std::vector<paddle::Tensor> linear_unscaled(const paddle::Tensor& x_in, const paddle::Tensor& weight,
                                            const paddle::optional<paddle::Tensor>& bias, const WT* w, const char* op) {
  const paddle::Tensor x = dense(x_in);
  check_linear(x, weight, bias);
  PD_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  const int64_t N = weight.shape()[0], K = weight.shape()[1], M = K ? x.numel() / K : 0;
  paddle::Tensor out = alloc_out(x, N);
  linear_fp32<WT>(x.data<float>(), M, K, w, nullptr, bias ? bias->data<float>() : nullptr, N, out.data<float>(), pb_isa());
  return {out};
}

std::vector<paddle::Tensor> LinearBf16(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::optional<paddle::Tensor>& bias) {
  return linear_unscaled<uint16_t>(x, weight, bias, bf16_bits(weight, "weight_only_linear_bf16"), "weight_only_linear_bf16");
}

// fp32 weights stored [N, K]: the tied LM head reads the embedding table as it is. Paddle's
// matmul with transpose_y on that [250880, 1024] table took 131 ms at 8 rows (66 ms with a
// transposed copy, which would double its memory).
std::vector<paddle::Tensor> LinearF32(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::optional<paddle::Tensor>& bias) {
  PD_CHECK(weight.dtype() == paddle::DataType::FLOAT32, "weight_only_linear_fp32: weight must be float32");
  return linear_unscaled<float>(x, weight, bias, weight.data<float>(), "weight_only_linear_fp32");
}

template <typename WT>
paddle::Tensor embed(const paddle::Tensor& ids_in, const paddle::Tensor& weight, const float* scale) {
  const paddle::Tensor ids = dense(ids_in);
  PD_CHECK(weight.is_contiguous(), "embedding: weight must be contiguous");
  PD_CHECK(ids.dtype() == paddle::DataType::INT64 || ids.dtype() == paddle::DataType::INT32, "embedding: ids must be int64/int32");
  PD_CHECK(weight.shape().size() == 2, "embedding: weight must be [V, H]");
  const int64_t V = weight.shape()[0], H = weight.shape()[1], T = ids.numel();
  std::vector<int64_t> shape = ids.shape();
  shape.push_back(H);
  paddle::Tensor out = paddle::empty(shape, paddle::DataType::FLOAT32, ids.place());
  const WT* w = static_cast<const WT*>(weight.data());
  float* y = out.data<float>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t id = ids.dtype() == paddle::DataType::INT64 ? ids.data<int64_t>()[t] : ids.data<int32_t>()[t];
    PD_CHECK(id >= 0 && id < V, "embedding: id ", id, " out of range [0, ", V, ")");
    const float s = scale ? scale[id] : 1.f;
    for (int64_t h = 0; h < H; ++h) y[t * H + h] = to_f32(w[id * H + h]) * s;
  }
  return out;
}

std::vector<paddle::Tensor> EmbeddingInt8(const paddle::Tensor& ids, const paddle::Tensor& weight, const paddle::Tensor& scale) {
  PD_CHECK(weight.dtype() == paddle::DataType::INT8, "embedding_int8: weight must be int8");
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == weight.shape()[0], "embedding_int8: scale must be float32 [V]");
  return {embed<int8_t>(ids, weight, scale.data<float>())};
}

std::vector<paddle::Tensor> EmbeddingBf16(const paddle::Tensor& ids, const paddle::Tensor& weight) {
  bf16_bits(weight, "embedding_bf16");
  return {embed<uint16_t>(ids, weight, nullptr)};
}

// [cpu isa, isa in force, threads, has avx512_bf16, OpenMP max threads]: what the kernels will do.
std::vector<paddle::Tensor> OpsInfo(const paddle::Tensor& x) {
  paddle::Tensor out = paddle::empty({5}, paddle::DataType::INT64, paddle::CPUPlace());
  int64_t* o = out.data<int64_t>();
  o[0] = pb_cpu_isa(), o[1] = pb_isa(), o[2] = pb_num_threads(), o[3] = pb_has_avx512bf16(), o[4] = omp_get_max_threads();
  return {out};
}

// Sum of a float32 tensor with pb_num_threads() threads: the memory read bandwidth reference.
std::vector<paddle::Tensor> StreamSum(const paddle::Tensor& x) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32, "pb_stream_sum: float32 only");
  const float* p = x.data<float>();
  const int64_t n = x.numel();
  const int nt = pb_num_threads();
  const bool vec = pb_cpu_isa() >= PB_AVX512;  // a reference: not capped by PADDLEBLOOM_ISA
  std::vector<float> part(nt, 0.f);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t a = n * t / T, b = n * (t + 1) / T;
    float s = 0.f;
    if (vec) s = sum_avx512(p + a, b - a);
    else for (int64_t i = a; i < b; ++i) s += p[i];
    part[t] = s;
  }
  paddle::Tensor out = paddle::empty({1}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  float s = 0.f;
  for (float v : part) s += v;
  out.data<float>()[0] = s;
  return {out};
}

// ---------------------------------------------------------------- shape / dtype inference
using Shape = std::vector<int64_t>;
using OptShape = paddle::optional<Shape>;
std::vector<Shape> LinearShape(const Shape& x, const Shape& w, const Shape& s, const OptShape& b) {
  Shape out = x;
  out.back() = w[0];
  return {out};
}
std::vector<Shape> LinearBf16Shape(const Shape& x, const Shape& w, const OptShape& b) { return LinearShape(x, w, w, b); }
std::vector<Shape> EmbeddingShape(const Shape& ids, const Shape& w) {
  Shape out = ids;
  out.push_back(w[1]);
  return {out};
}
std::vector<Shape> EmbeddingInt8Shape(const Shape& ids, const Shape& w, const Shape& s) { return EmbeddingShape(ids, w); }
std::vector<Shape> InfoShape(const Shape& x) { return {{5}}; }
std::vector<Shape> SumShape(const Shape& x) { return {{1}}; }

using DT = paddle::DataType;
using OptDT = paddle::optional<DT>;
std::vector<DT> F32_4(const DT&, const DT&, const DT&, const OptDT&) { return {DT::FLOAT32}; }
std::vector<DT> F32_3o(const DT&, const DT&, const OptDT&) { return {DT::FLOAT32}; }
std::vector<DT> F32_3(const DT&, const DT&, const DT&) { return {DT::FLOAT32}; }
std::vector<DT> F32_2(const DT&, const DT&) { return {DT::FLOAT32}; }
std::vector<DT> F32_1(const DT&) { return {DT::FLOAT32}; }
std::vector<DT> I64_1(const DT&) { return {DT::INT64}; }

}  // namespace

PD_BUILD_OP(weight_only_linear_int8)
    .Inputs({"x", "weight", "scale", paddle::Optional("bias")})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(LinearInt8))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_4));

PD_BUILD_OP(weight_only_linear_bf16)
    .Inputs({"x", "weight", paddle::Optional("bias")})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(LinearBf16))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearBf16Shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_3o));

PD_BUILD_OP(weight_only_linear_fp32)
    .Inputs({"x", "weight", paddle::Optional("bias")})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(LinearF32))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearBf16Shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_3o));

PD_BUILD_OP(embedding_int8)
    .Inputs({"ids", "weight", "scale"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(EmbeddingInt8))
    .SetInferShapeFn(PD_INFER_SHAPE(EmbeddingInt8Shape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_3));

PD_BUILD_OP(embedding_bf16)
    .Inputs({"ids", "weight"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(EmbeddingBf16))
    .SetInferShapeFn(PD_INFER_SHAPE(EmbeddingShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_2));

PD_BUILD_OP(paddlebloom_ops_info)
    .Inputs({"x"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(OpsInfo))
    .SetInferShapeFn(PD_INFER_SHAPE(InfoShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(I64_1));

PD_BUILD_OP(pb_stream_sum)
    .Inputs({"x"})
    .Outputs({"out"})
    .SetKernelFn(PD_KERNEL(StreamSum))
    .SetInferShapeFn(PD_INFER_SHAPE(SumShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(F32_1));
