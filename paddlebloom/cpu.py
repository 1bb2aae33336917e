"""CPU set-up that must happen before Paddle is imported (kept free of Paddle imports).

Paddle's bundled MKL (mklml) takes a generic code path on non-Intel CPUs. On this project's AMD
EPYC machines `MKL_DEBUG_CPU_TYPE=5` (use the AVX2 kernels) measured 26.5 -> 86 GFLOP/s for an
fp32 2048^3 matmul on 1 thread, and 275 -> 144 ms for the batch-8 BLOOM-560m LM head.
`paddlebloom/__init__.py` applies it before any submodule imports Paddle, so every entry point
(scripts, `python -m paddlebloom...`, the tests) gets it; a value the user set always wins.

The other two work around Paddle's CPU runtime on every machine (see each function for numbers):
`user_thread_count` (`import paddle` overwrites OMP_NUM_THREADS) and `reuse_freed_memory`
(Paddle's CPU allocator maps and unmaps every large tensor).
"""
import ctypes
import os
from typing import Optional


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    return _cpuinfo_field("vendor_id")


def prefer_avx2_mkl_on_amd() -> bool:
    """Set MKL_DEBUG_CPU_TYPE=5 on AMD CPUs unless the user chose a value; True when set here.

    Paddle's bundled MKL (mklml) reads it when its first routine runs, so it works from Python as
    long as no MKL routine has run yet. Intel CPUs keep MKL's own choice (AVX-512 where present).
    """
    if "MKL_DEBUG_CPU_TYPE" in os.environ or cpu_vendor() != "AuthenticAMD" or "avx2" not in _cpuinfo_field("flags").split():
        return False
    os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    return True


def user_thread_count() -> Optional[int]:
    """OMP_NUM_THREADS as the user set it, or None when the user did not set it.

    `import paddle` writes OMP_NUM_THREADS=1 into os.environ when it is unset
    (paddle/base/__init__.py), so after the import os.environ cannot tell Paddle's default from a
    user's "1", and honouring it ran every training step on one thread. The environment the
    process was started with (/proc/self/environ) still holds only what the user set.
    """
    current = os.environ.get("OMP_NUM_THREADS")
    if current and current != "1":
        return _positive_int(current)  # Paddle only ever writes "1"
    try:
        with open("/proc/self/environ", "rb") as f:
            initial = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    except OSError:
        return _positive_int(current)  # no /proc: trust the environment as it is
    return _positive_int(initial.get(b"OMP_NUM_THREADS", b"").decode(errors="replace"))


def _positive_int(text: Optional[str]) -> Optional[int]:
    try:
        return max(1, int(text)) if text else None
    except ValueError:
        return None  # unusable (Paddle treats it as 1): choose as if unset


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def reuse_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Serve tensors up to limit_bytes from glibc's heap and keep freed memory for reuse.

    Paddle's CPU allocator passes every tensor to malloc and frees it as soon as it dies. glibc
    serves blocks above 32 MiB (the ceiling of its adaptive threshold) with a fresh mmap and
    unmaps them on free, so each large tensor of every step - the [tokens, vocab] logits, their
    gradients, the embedding gradient - is page-faulted in and zeroed by the kernel again.
    Measured on a 2-core EPYC: a [1024, 32000] fp32 multiply took 130-180 ms, 20-75 ms with
    this. Returns False where there is no glibc (the default allocator then stays).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes))
    except (OSError, AttributeError):
        return False
