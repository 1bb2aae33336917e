// Weight-only int8 / bf16 linear layers and embeddings for CPU decoding.
//
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] + bias[n], weight [N, K] (one output channel's K
// weights contiguous, so the tied LM head is the embedding table itself). Batch-1 decoding reads
// every weight once per token, so the kernels convert int8/bf16 to fp32 in registers and never
// write a dequantised copy; several activation rows share each converted weight vector (register
// tiles of MB rows x NB output channels) so prefill and batched decoding stay compute-efficient.
// On AVX-512 VNNI CPUs a second int8 kernel quantises the activations per row to u8 and uses
// vpdpbusd; see use_vnni() for when it runs.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "paddle/extension.h"

namespace {

// Raw dot products of an MB x NB tile: out[i * NB + j] = sum_k x[i, k] * w[j, k].
using TileFn = void (*)(const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t K, float* out);

// The hardware prefetcher alone left a batch-1 GEMV at ~50% of the single-core stream bandwidth
// here (a tile reads NB short rows side by side); fetching the same offset of the next tile's
// rows (NB rows ahead) brought it to ~85-95%. Prefetches never fault, so running past the end of
// the weight is harmless.
inline void prefetch_next_tile(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// ---------------------------------------------------------------- scalar (any x86-64 CPU)
inline float to_f32(int8_t v) { return static_cast<float>(v); }
inline float to_f32(uint16_t v) {  // bf16 is the top half of an fp32
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename WT, int MB, int NB>
void tile_scalar(const float* x, int64_t ldx, const void* wv, int64_t ldw, int64_t K, float* out) {
  const WT* w = static_cast<const WT*>(wv);
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[i * ldx + k] * to_f32(w[j * ldw + k]);
      out[i * NB + j] = s;
    }
}

// ---------------------------------------------------------------- AVX2 + FMA (8 lanes)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline __m256 load8(const uint16_t* p) {
  __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

template <typename WT, int MB, int NB>
void tile_avx2(const float* x, int64_t ldx, const void* wv, int64_t ldw, int64_t K, float* out) {
  const WT* w = static_cast<const WT*>(wv);
  __m256 acc[MB][NB];
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wf[NB];
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      wf[j] = load8(w + j * ldw + k);
      prefetch_next_tile(w + (j + NB) * ldw + k);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
#pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wf[j], acc[i][j]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      float s = hsum8(acc[i][j]);
      for (int64_t t = k; t < K; ++t) s += x[i * ldx + t] * to_f32(w[j * ldw + t]);  // K % 8 tail
      out[i * NB + j] = s;
    }
}
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512 (16 lanes, masked tail)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma")
inline __m512 load16(const int8_t* p, __mmask16 m) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}
inline __m512 load16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

template <typename WT, int MB, int NB>
inline void fma_step(const float* x, int64_t ldx, const WT* w, int64_t ldw, int64_t k, __mmask16 m, __m512 (&acc)[MB][NB]) {
  __m512 wf[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    wf[j] = load16(w + j * ldw + k, m);
    prefetch_next_tile(w + (j + NB) * ldw + k);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wf[j], acc[i][j]);
  }
}

template <typename WT, int MB, int NB>
void tile_avx512(const float* x, int64_t ldx, const void* wv, int64_t ldw, int64_t K, float* out) {
  const WT* w = static_cast<const WT*>(wv);
  __m512 acc[MB][NB];
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) fma_step<WT, MB, NB>(x, ldx, w, ldw, k, 0xFFFF, acc);
  // The partial last vector: masked loads never touch memory past the row.
  if (k < K) fma_step<WT, MB, NB>(x, ldx, w, ldw, k, static_cast<__mmask16>((1u << (K - k)) - 1), acc);
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) out[i * NB + j] = _mm512_reduce_add_ps(acc[i][j]);
}
#pragma GCC pop_options

// VNNI: activations quantised per row to u8 = round(x / sx) + 128, so the signed-by-unsigned
// vpdpbusd applies; sum_k (q + 128) * w = sum_k q * w + 128 * colsum(w) is corrected per channel.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
float quantize_row_u8(const float* x, int64_t K, uint8_t* q) {
  __m512 amax = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
    amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + k)));
  }
  const float mx = _mm512_reduce_max_ps(amax);
  const __m512 inv = _mm512_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
  const __m512i off = _mm512_set1_epi32(128);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = K - k >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), inv)), off);
    _mm512_mask_cvtepi32_storeu_epi8(q + k, m, v);  // values in [1, 255]: truncation is exact
  }
  return mx / 127.f;
}

template <int MB, int NB>
inline void dpbusd_step(const uint8_t* q, int64_t ldq, const int8_t* w, int64_t ldw, int64_t k, __mmask64 m,
                        __m512i (&acc)[MB][NB]) {
  __m512i wv[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    wv[j] = _mm512_maskz_loadu_epi8(m, w + j * ldw + k);
    prefetch_next_tile(w + (j + NB) * ldw + k);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
    const __m512i xv = _mm512_maskz_loadu_epi8(m, q + i * ldq + k);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
  }
}

template <int MB, int NB>
void tile_vnni(const uint8_t* q, int64_t ldq, const int8_t* w, int64_t ldw, int64_t K, int32_t* out) {
  __m512i acc[MB][NB];
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) dpbusd_step<MB, NB>(q, ldq, w, ldw, k, ~0ULL, acc);
  if (k < K) dpbusd_step<MB, NB>(q, ldq, w, ldw, k, (1ULL << (K - k)) - 1, acc);  // weights past K read as 0
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) out[i * NB + j] = _mm512_reduce_add_epi32(acc[i][j]);
}

int32_t colsum_vnni(const int8_t* w, int64_t K) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i acc = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    const __mmask64 m = K - k >= 64 ? ~0ULL : (1ULL << (K - k)) - 1;
    acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(m, w + k));
  }
  return _mm512_reduce_add_epi32(acc);
}

#pragma GCC pop_options

// Streaming read of n floats (the benchmark's memory-bandwidth reference).
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
float sum_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(p + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(p + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(p + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(p + i + 48));
  }
  float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  for (; i < n; ++i) s += p[i];
  return s;
}
#pragma GCC pop_options

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

void linear_vnni(const float* x, int64_t M, int64_t K, const int8_t* w, const float* scale, const float* bias, int64_t N,
                 float* y) {
  constexpr int MB = 4, NB = 4;
  using VnniTile = void (*)(const uint8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*);
  static const VnniTile tiles[4][2] = {{tile_vnni<1, NB>, tile_vnni<1, 1>}, {tile_vnni<2, NB>, tile_vnni<2, 1>},
                                       {tile_vnni<3, NB>, tile_vnni<3, 1>}, {tile_vnni<4, NB>, tile_vnni<4, 1>}};
  std::vector<uint8_t> q(static_cast<size_t>(M * K));
  std::vector<float> sx(static_cast<size_t>(M));
  const int64_t mc = std::max<int64_t>(MB, (256 * 1024 / K) / MB * MB);
  const int nt = threads_for(M, N, K, NB);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) sx[m] = quantize_row_u8(x + m * K, K, q.data() + m * K);
    int64_t n0, n1;
    split(N, NB, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    int32_t acc[MB * NB], cs[NB];
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
      const int64_t m1 = std::min(M, m0 + mc);
      for (int64_t n = n0; n < n1;) {
        const int nb = n1 - n >= NB ? NB : 1;
        for (int j = 0; j < nb; ++j) cs[j] = 128 * colsum_vnni(w + (n + j) * K, K);
        for (int64_t m = m0; m < m1; m += MB) {
          const int mb = static_cast<int>(std::min<int64_t>(MB, m1 - m));
          tiles[mb - 1][nb == 1](q.data() + m * K, K, w + n * K, K, K, acc);
          for (int i = 0; i < mb; ++i)
            for (int j = 0; j < nb; ++j)
              y[(m + i) * N + n + j] = static_cast<float>(acc[i * nb + j] - cs[j]) * sx[m + i] * scale[n + j] +
                                       (bias ? bias[n + j] : 0.f);
        }
        n += nb;
      }
    }
  }
}

// ---------------------------------------------------------------- op bodies
// Smallest M at which the VNNI kernel beats the fp32-activation kernel on a VNNI CPU (measured,
// bench/run_ops_bench.py); it is taken only when PADDLEBLOOM_ISA=vnni asks for it, because
// quantising activations per row loses accuracy on outlier channels (tests/test_ops.py).
constexpr int64_t kVnniMinRows = 8;

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

std::vector<paddle::Tensor> LinearInt8(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& scale,
                                       const paddle::optional<paddle::Tensor>& bias) {
  check_linear(x, weight, bias);
  PD_CHECK(weight.dtype() == paddle::DataType::INT8, "weight_only_linear_int8: weight must be int8");
  const int64_t N = weight.shape()[0], K = weight.shape()[1], M = K ? x.numel() / K : 0;
  PD_CHECK(scale.dtype() == paddle::DataType::FLOAT32 && scale.numel() == N, "weight_only_linear_int8: scale must be float32 [N]");
  paddle::Tensor out = alloc_out(x, N);
  const float* b = bias ? bias->data<float>() : nullptr;
  const int isa = pb_isa();
  if (isa == PB_VNNI && std::getenv("PADDLEBLOOM_ISA") && M >= kVnniMinRows)
    linear_vnni(x.data<float>(), M, K, weight.data<int8_t>(), scale.data<float>(), b, N, out.data<float>());
  else
    linear_fp32<int8_t>(x.data<float>(), M, K, weight.data<int8_t>(), scale.data<float>(), b, N, out.data<float>(), isa);
  return {out};
}

const uint16_t* bf16_bits(const paddle::Tensor& w, const char* op) {
  PD_CHECK(w.dtype() == paddle::DataType::BFLOAT16 || w.dtype() == paddle::DataType::UINT16,
           op, ": weight must be bfloat16 (or its bits as uint16)");
  return static_cast<const uint16_t*>(w.data());
}

std::vector<paddle::Tensor> LinearBf16(const paddle::Tensor& x, const paddle::Tensor& weight,
                                       const paddle::optional<paddle::Tensor>& bias) {
  check_linear(x, weight, bias);
  const uint16_t* w = bf16_bits(weight, "weight_only_linear_bf16");
  const int64_t N = weight.shape()[0], K = weight.shape()[1], M = K ? x.numel() / K : 0;
  paddle::Tensor out = alloc_out(x, N);
  linear_fp32<uint16_t>(x.data<float>(), M, K, w, nullptr, bias ? bias->data<float>() : nullptr, N, out.data<float>(),
                        pb_isa());
  return {out};
}

template <typename WT>
paddle::Tensor embed(const paddle::Tensor& ids, const paddle::Tensor& weight, const float* scale) {
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
  const bool vec = pb_isa() >= PB_AVX512;
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
