// BLOOM attention over a persistent KV cache: the step-wise decode engine's one custom kernel.
//
// Why our own op: a static program cannot keep a growing cache between calls, and passing the
// cache in and out of every call copies all of it per token (bloom-560m, 8 slots x 512 tokens:
// 800 MB). Here the cache is a preallocated tensor the engine owns and shares with the program
// without copying; this op writes the new tokens' keys/values into it in place and attends over
// exactly the filled part of each row's slot, so a step reads only the context it needs and a
// request's context is never recomputed.
//
// Shapes (float32):
//   qkv      [b, s, heads * 3 * head_dim]   BLOOM's fused layout: per position [heads, 3, head_dim]
//   cache    [layers, 2, slots, heads, max_len, head_dim]   (keys, values), written in place
//   slots    [b] int64   cache slot of each row
//   past     [b] int64   tokens already in that slot (a prefix adapter's included)
//   lens     [b] int64   valid new tokens of the row (rows are right-padded to s)
//   slopes   [heads]     ALiBi slopes
//   out      [b, s, heads * head_dim]   (padded positions are zero)
// ALiBi adds slope * key_position; cache index == real token position, so a row needs no padding
// mask and a prefix occupies positions [0, n_prefix) exactly as in the dynamic model.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "paddle/extension.h"

// One binary for every CPU the build directory may meet: GCC clones the function per ISA and
// picks at load time (the loops below are plain C++ that the compiler vectorises per clone).
#define PB_MULTIVERSION __attribute__((target_clones("avx512f", "avx2,fma", "default")))

// Never more threads than independent (row, head) tasks.
static int pb_threads_for(int64_t tasks) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pb_num_threads(), tasks))); }

namespace {

struct Geometry {
  int64_t b, s, heads, head_dim, slots, max_len;
};

// One (row, head) pair: append the new keys/values, then causal attention for each new query.
PB_MULTIVERSION
void attend_row_head(const float* qkv, float* keys, float* values, float* out, const Geometry& g,
                     int64_t row, int64_t head, int64_t past, int64_t n, float slope, std::vector<float>& scores) {
  const int64_t hd = g.head_dim, stride = g.heads * 3 * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t j = 0; j < n; ++j) {
    const float* token = qkv + (row * g.s + j) * stride + head * 3 * hd;
    std::copy(token + hd, token + 2 * hd, keys + (past + j) * hd);
    std::copy(token + 2 * hd, token + 3 * hd, values + (past + j) * hd);
  }
  scores.resize(past + n);
  for (int64_t i = 0; i < n; ++i) {
    const float* q = qkv + (row * g.s + i) * stride + head * 3 * hd;
    const int64_t total = past + i + 1;
    float best = -INFINITY;
    for (int64_t t = 0; t < total; ++t) {
      const float* k = keys + t * hd;
      float dot = 0.f;
      for (int64_t d = 0; d < hd; ++d) dot += q[d] * k[d];
      scores[t] = dot * scale + slope * static_cast<float>(t);
      best = std::max(best, scores[t]);
    }
    float sum = 0.f;
    for (int64_t t = 0; t < total; ++t) {
      scores[t] = std::exp(scores[t] - best);
      sum += scores[t];
    }
    float* o = out + (row * g.s + i) * g.heads * hd + head * hd;
    std::fill(o, o + hd, 0.f);
    const float inv = 1.f / sum;
    for (int64_t t = 0; t < total; ++t) {
      const float* v = values + t * hd;
      const float p = scores[t] * inv;
      for (int64_t d = 0; d < hd; ++d) o[d] += p * v[d];
    }
  }
}

}  // namespace

std::vector<paddle::Tensor> CacheAttention(const paddle::Tensor& qkv, paddle::Tensor& cache, const paddle::Tensor& slots,
                                           const paddle::Tensor& past, const paddle::Tensor& lens, const paddle::Tensor& slopes,
                                           int layer) {
  PD_CHECK(qkv.dtype() == paddle::DataType::FLOAT32 && cache.dtype() == paddle::DataType::FLOAT32, "cache_attention: float32 qkv and cache");
  const auto cs = cache.shape();
  const auto qs = qkv.shape();
  PD_CHECK(cs.size() == 6 && cs[1] == 2, "cache_attention: cache must be [layers, 2, slots, heads, max_len, head_dim]");
  PD_CHECK(qs.size() == 3, "cache_attention: qkv must be [batch, seq, heads * 3 * head_dim]");
  Geometry g{qs[0], qs[1], cs[3], cs[5], cs[2], cs[4]};
  PD_CHECK(qs[2] == g.heads * 3 * g.head_dim, "cache_attention: qkv width does not match the cache's heads and head_dim");
  PD_CHECK(layer >= 0 && layer < cs[0], "cache_attention: layer out of range");
  PD_CHECK(slots.numel() == g.b && past.numel() == g.b && lens.numel() == g.b && slopes.numel() == g.heads,
           "cache_attention: slots/past/lens need one entry per row and slopes one per head");
  const int64_t* slot = slots.data<int64_t>();
  const int64_t* pst = past.data<int64_t>();
  const int64_t* len = lens.data<int64_t>();
  for (int64_t r = 0; r < g.b; ++r) {
    PD_CHECK(slot[r] >= 0 && slot[r] < g.slots, "cache_attention: slot index out of range");
    PD_CHECK(len[r] >= 0 && len[r] <= g.s && pst[r] >= 0, "cache_attention: bad past/len");
    PD_CHECK(pst[r] + len[r] <= g.max_len, "cache_attention: the slot is full (past + new tokens > max_len)");
  }
  auto out = paddle::empty({g.b, g.s, g.heads * g.head_dim}, paddle::DataType::FLOAT32, qkv.place());
  float* o = out.data<float>();
  std::fill(o, o + out.numel(), 0.f);
  const float* q = qkv.data<float>();
  const float* sl = slopes.data<float>();
  float* base = cache.data<float>() + static_cast<int64_t>(layer) * 2 * g.slots * g.heads * g.max_len * g.head_dim;
  const int64_t plane = g.slots * g.heads * g.max_len * g.head_dim;  // keys -> values
  const int64_t tasks = g.b * g.heads;
  // Tasks dealt round-robin by thread id (no worksharing construct): with Paddle's libiomp5 behind
  // GCC's OpenMP calls, `omp for schedule(dynamic)` in a parallel region started from a non-main
  // thread (the server's scheduler) handed some tasks to two threads (measured: wrong outputs in
  // 1 of 5 calls from a thread, never from the main thread).
#pragma omp parallel num_threads(pb_threads_for(tasks))
  {
    std::vector<float> scores;
    const int64_t first = omp_get_thread_num(), stride = omp_get_num_threads();
    for (int64_t task = first; task < tasks; task += stride) {
      const int64_t r = task / g.heads, h = task % g.heads;
      float* keys = base + (slot[r] * g.heads + h) * g.max_len * g.head_dim;
      attend_row_head(q, keys, keys + plane, o, g, r, h, pst[r], len[r], sl[h], scores);
    }
  }
  return {out};
}

std::vector<std::vector<int64_t>> CacheAttentionShape(const std::vector<int64_t>& qkv, const std::vector<int64_t>& cache,
                                                      const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                      const std::vector<int64_t>&, const std::vector<int64_t>&, int) {
  return {{qkv[0], qkv[1], cache[3] * cache[5]}};
}

std::vector<paddle::DataType> CacheAttentionDtype(const paddle::DataType& qkv, const paddle::DataType&, const paddle::DataType&,
                                                  const paddle::DataType&, const paddle::DataType&, const paddle::DataType&) {
  return {qkv};
}

PD_BUILD_OP(cache_attention)
    .Inputs({"qkv", "cache", "slots", "past", "lens", "slopes"})
    .Outputs({"out", "cache_out"})
    .SetInplaceMap({{"cache", "cache_out"}})
    .Attrs({"layer: int"})
    .SetKernelFn(PD_KERNEL(CacheAttention))
    .SetInferShapeFn(PD_INFER_SHAPE(CacheAttentionShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(CacheAttentionDtype));
