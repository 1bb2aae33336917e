"""paddlebloom's C++ CPU operators (weight-only int8 / bf16 linear layers and embeddings).

    from paddlebloom import ops
    m = ops.load()                       # the extension module, built on first use if needed
    y = m.weight_only_linear_int8(x, w_int8, scale, bias)   # bias may be None

`load()` also registers the ops with Paddle, which is all `paddle.inference` needs: a program
saved with them runs in a fresh process after `ops.register_for_inference()` (or `load()`)
and before `paddle.inference.create_predictor`.

Threads: the kernels use PADDLEBLOOM_NUM_THREADS threads when set, else every CPU of this
process (csrc/common.h). `set_num_threads(n)` sets it for this process and its children; call
it with the same n as `config.set_cpu_math_library_num_threads(n)`. Measured on this project's
machines: a kernel runs on the thread that calls `predictor.run()` (the executor has no op
threads of its own), and there Paddle's omp_get_max_threads() equals the predictor's setting.

ISA: PADDLEBLOOM_ISA=scalar|avx2|avx512|vnni forces that kernel family (or the best the CPU has
below it); unset, each op picks the fastest accurate kernel for the CPU. `info()` says what the
kernels will use.
"""

import os
import threading
import types
import warnings
from pathlib import Path

from ..cli import quiet_upstream_warnings

# `python -m paddlebloom.ops.build` (make install) imports Paddle first here, before any script could
# filter Paddle's import-time ccache warning: filter it for these imports only (no global change).
with warnings.catch_warnings():
    quiet_upstream_warnings()
    import paddle
    from paddle.jit.marker import unified
    from paddle.utils.cpp_extension import load_op_meta_info_and_register_op

    from ..workarounds import custom_op_module


class OpsUnavailable(RuntimeError):
    """The C++ operators cannot be built or loaded here; str() is one line saying why."""


__all__ = ["OpsUnavailable", "load", "register_for_inference", "library", "info", "set_num_threads", "ISA_NAMES"]

ISA_NAMES = ("scalar", "avx2", "avx512", "vnni")
_lock = threading.Lock()
_state = {}  # "registered": (library path, op names), "module": the Python API


@unified
def library() -> Path:
    """Path of the built shared library (building it first if needed)."""
    # lazy: build.py is also `python -m paddlebloom.ops.build`; imported with the package it would be
    # loaded twice by that command (runpy warns), and it needs OpsUnavailable from here first.
    from .build import build

    return build()


# unified: inside paddle.jit.to_static these run as plain Python (not rewritten by dy2static).
@unified
def register_for_inference() -> Path:
    """Register the ops with Paddle (once per process); returns the library path.

    Enough for `paddle.inference`, which looks custom ops up by name in Paddle's registry.
    """
    with _lock:
        if "registered" not in _state:
            path = library()
            try:
                _state["registered"] = (path, load_op_meta_info_and_register_op(str(path)))
            except Exception as e:  # e.g. a library built against another Paddle
                raise OpsUnavailable(
                    f"paddlebloom C++ ops could not be loaded: {str(e).strip().splitlines()[-1]}"
                ) from e
        return _state["registered"][0]


@unified
def load() -> types.ModuleType:
    """The extension module (one per process): a Python function per op, taking paddle Tensors."""
    register_for_inference()
    with _lock:
        if "module" not in _state:
            _state["module"] = custom_op_module(*_state["registered"])
        return _state["module"]


def set_num_threads(n: int) -> None:
    """Threads for the ops in this process (and children started after this call)."""
    os.environ["PADDLEBLOOM_NUM_THREADS"] = str(max(1, int(n)))


def info() -> dict:
    """What the kernels will do now: CPU level, level in force, threads, avx512_bf16, OpenMP max."""
    cpu, isa, threads, bf16, omp = (int(v) for v in load().paddlebloom_ops_info(paddle.zeros([1])).numpy())
    return {
        "cpu_isa": ISA_NAMES[cpu],
        "isa": ISA_NAMES[isa],
        "threads": threads,
        "avx512_bf16": bool(bf16),
        "omp_max_threads": omp,
    }
