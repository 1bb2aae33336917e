// Register-tile kernels of the weight-only linear ops, one family per ISA (see weight_only.cc).
//
// Each family is compiled under its own `#pragma GCC target`, never -march, so one build runs on
// every x86-64 CPU; weight_only.cc picks a family at run time (common.h: pb_isa()). A tile
// computes the raw dot products of MB activation rows with NB weight rows (output channels):
// both operands run along K, so a converted weight vector is reused for MB rows in registers.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace pb_wo {

// Raw dot products of an MB x NB tile: out[i * NB + j] = sum_k x[i, k] * w[j, k].
// Raw dot products of an MB x NB tile: out[i * NB + j] = sum_k x[i, k] * w[j, k].
using TileFn = void (*)(const float* x, int64_t ldx, const void* w, int64_t ldw, int64_t K, float* out);

// The hardware prefetcher alone left a batch-1 GEMV at ~50% of the single-core stream bandwidth
// here (a tile reads NB short rows side by side); fetching the same offset of the next tile's
// rows (NB rows ahead) brought it to ~85-95%. Prefetches never fault, so running past the end of
// the weight is harmless.
inline void prefetch_next_tile(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// ---------------------------------------------------------------- scalar (any x86-64 CPU)
inline float to_f32(int8_t v) { return static_cast<float>(v); }
inline float to_f32(float v) { return v; }
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
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
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
inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
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

// VNNI: each activation row is quantised asymmetrically to u8, q = round((x - lo) / s) with
// s = (hi - lo) / 255 (twice the resolution of a symmetric +-127 code), so the unsigned-by-signed
// vpdpbusd applies and x ~= lo + s * q gives sum_k x w = s * sum_k q w + lo * colsum(w).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")
inline __mmask16 mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Writes q[0, K); returns the row's step s and offset lo, and its range / RMS (for the guard).
inline void quantize_row_u8(const float* x, int64_t K, uint8_t* q, float* step, float* lo, float* spread) {
  __m512 vmin = _mm512_set1_ps(INFINITY), vmax = _mm512_set1_ps(-INFINITY), sq = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = mask16(K - k);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + k);
    vmin = _mm512_mask_min_ps(vmin, m, vmin, v);
    vmax = _mm512_mask_max_ps(vmax, m, vmax, v);
    sq = _mm512_fmadd_ps(v, v, sq);
  }
  const float mn = _mm512_reduce_min_ps(vmin), range = _mm512_reduce_max_ps(vmax) - mn;
  const float rms = std::sqrt(_mm512_reduce_add_ps(sq) / static_cast<float>(K));
  const __m512 inv = _mm512_set1_ps(range > 0.f ? 255.f / range : 0.f), vlo = _mm512_set1_ps(mn);
  for (int64_t k = 0; k < K; k += 16) {
    const __mmask16 m = mask16(K - k);
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + k), vlo), inv));
    _mm512_mask_cvtusepi32_storeu_epi8(q + k, m, v);  // in [0, 255] up to rounding; saturate anyway
  }
  *step = range / 255.f, *lo = mn, *spread = rms > 0.f ? range / rms : 0.f;
}

// CS: also accumulate the weight rows' sums (dot with ones), done on the first row block only.
template <int MB, int NB, bool CS>
inline void dpbusd_step(const uint8_t* q, int64_t ldq, const int8_t* w, int64_t ldw, int64_t k, __mmask64 m,
                        __m512i (&acc)[MB][NB], __m512i (&cs)[NB]) {
  __m512i wv[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    wv[j] = _mm512_maskz_loadu_epi8(m, w + j * ldw + k);
    prefetch_next_tile(w + (j + NB) * ldw + k);
    if (CS) cs[j] = _mm512_dpbusd_epi32(cs[j], _mm512_set1_epi8(1), wv[j]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
    const __m512i xv = _mm512_maskz_loadu_epi8(m, q + i * ldq + k);
#pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], xv, wv[j]);
  }
}

template <int MB, int NB, bool CS>
void tile_vnni(const uint8_t* q, int64_t ldq, const int8_t* w, int64_t ldw, int64_t K, int32_t* out, int32_t* colsum) {
  __m512i acc[MB][NB], cs[NB];
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    cs[j] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) acc[i][j] = _mm512_setzero_si512();
  }
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) dpbusd_step<MB, NB, CS>(q, ldq, w, ldw, k, ~0ULL, acc, cs);
  if (k < K) dpbusd_step<MB, NB, CS>(q, ldq, w, ldw, k, (1ULL << (K - k)) - 1, acc, cs);  // weights past K read as 0
#pragma GCC unroll 4
  for (int j = 0; j < NB; ++j) {
    if (CS) colsum[j] = _mm512_reduce_add_epi32(cs[j]);
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i) out[i * NB + j] = _mm512_reduce_add_epi32(acc[i][j]);
  }
}
#pragma GCC pop_options

// Streaming read of n floats (the benchmark's memory-bandwidth reference).
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
inline float sum_avx512(const float* p, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    for (int j = 0; j < 64; j += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i + 1024 + j), _MM_HINT_T0);  // 4 KiB ahead
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

}  // namespace pb_wo
