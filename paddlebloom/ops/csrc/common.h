// Helpers shared by every paddlebloom CPU operator: ISA detection and the thread count.
//
// The extension is compiled once without -march and may be reused on another CPU (the build
// directory lives in the repository), so every ISA-specific kernel is compiled with a
// per-function / per-region GCC target and chosen here at run time from cpuid.
//
// ISA rule: pb_isa() is the best of scalar < avx2 (+fma) < avx512 (f+bw+vl) < vnni (avx512 +
// avx512_vnni) that the CPU has, capped by PADDLEBLOOM_ISA=scalar|avx2|avx512|vnni (read on every
// call, so tests switch paths in one process); a level the CPU lacks falls back to the best it has
// instead of faulting. Set, the variable forces that kernel family (vnni: the int8 op's VNNI
// kernel for every M); unset, an op may choose among the CPU's levels by shape and data
// (weight_only.cc: kVnniMinRows, kVnniMaxSpread).
//
// Thread rule: pb_num_threads() = PADDLEBLOOM_NUM_THREADS if it holds a positive integer (read on
// every call; paddlebloom.ops.set_num_threads sets it), else every CPU in this process's affinity
// mask. OMP_NUM_THREADS is deliberately not consulted: `import paddle` overwrites it with 1.
// Measured under paddle.inference (Paddle 3.3.1): a kernel runs on the thread that calls
// predictor.run() (the executor has no op threads of its own), where omp_get_max_threads() is the
// predictor's set_cpu_math_library_num_threads(n). The OpenMP runtime is Paddle's own libiomp5
// (build.py links it when the wheel ships it), so our parallel regions reuse the threads that
// MKL/oneDNN keep spinning: a program alternating our int8 op with Paddle's matmul ran 13.0 ->
// 8.1 ms (M=1) and 24.6 -> 13.1 ms (M=8) from 1 to 2 threads on 2 cores; with the compiler's
// libgomp (a second pool fighting the first) 2 threads were slower than 1 (13.3 -> 14.2 ms and
// 23.7 -> 36.8 ms).
#pragma once

#include <sched.h>

#include <cstdlib>
#include <cstring>

enum PbIsa { PB_SCALAR = 0, PB_AVX2 = 1, PB_AVX512 = 2, PB_VNNI = 3 };

inline bool pb_has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
inline bool pb_has_avx512() {
  return pb_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}
inline bool pb_has_vnni() { return pb_has_avx512() && __builtin_cpu_supports("avx512vnni"); }
inline bool pb_has_avx512bf16() { return pb_has_avx512() && __builtin_cpu_supports("avx512bf16"); }

// Best level the CPU supports (cpuid, cached: it cannot change while the process runs).
inline int pb_cpu_isa() {
  static const int level = pb_has_vnni() ? PB_VNNI : pb_has_avx512() ? PB_AVX512 : pb_has_avx2() ? PB_AVX2 : PB_SCALAR;
  return level;
}

// The level kernels may use now: the CPU's best, capped by PADDLEBLOOM_ISA.
inline int pb_isa() {
  int level = pb_cpu_isa();
  const char* want = std::getenv("PADDLEBLOOM_ISA");
  if (want && *want) {
    static const char* names[] = {"scalar", "avx2", "avx512", "vnni"};
    for (int i = 0; i < 4; ++i)
      if (std::strcmp(want, names[i]) == 0 && i < level) level = i;
  }
  return level;
}

inline int pb_num_threads() {
  const char* env = std::getenv("PADDLEBLOOM_NUM_THREADS");
  if (env && *env) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return 1;
}
