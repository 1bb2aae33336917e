"""Workarounds for defects of the pinned stack (paddlepaddle 3.3.1, paddlenlp 3.0.0b4, the mklml
and glibc under them): one function per defect.

Each docstring says what upstream does wrong, how it was measured, and the test that fails
without the workaround; the README's "Upstream defects" table lists them all. Callers call these
functions; nothing here runs at import. Defects avoided by owning the piece instead of patching
it are not here but where the owned piece is (the README's table names them too): BLOOM itself
(model.py: paddlenlp's init zeroes the Linear weights, labels are not shifted, the prefix and
mask break under TP and export), the CPU tensor-parallel ops (parallel/collectives.py: fleet's
have no gloo path), the step program and host-side sampling (engine/: generation export fails),
the training loop (paddlenlp's Trainer leaves log_history empty) and the C++ kernels (ops/: no
CPU weight-only int8, libiomp5's dynamic schedule off the main thread). Two live in the Paddle-free
cli module because they must work without importing Paddle: the filter for Paddle's import-time
ccache warning (cli.UPSTREAM_NOISE, applied before Paddle loads) and cli.leave_together.
"""

import ctypes
import os
import socket
import types
from contextlib import contextmanager
from typing import Optional, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.base import core
from paddle.distributed import collective
from paddle.distributed.fleet.utils import recompute
from paddle.utils.cpp_extension.extension_utils import _custom_api_content

# --- process set-up: the CPU runtime under Paddle -------------------------------------------


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
    """Set MKL_DEBUG_CPU_TYPE=5 on AMD CPUs with AVX2 unless the user chose a value; True when set here.

    Defect: Paddle's bundled MKL (mklml 2019.0.5) takes a generic code path on non-Intel CPUs. On
    this project's AMD EPYC machines MKL_DEBUG_CPU_TYPE=5 (use the AVX2 kernels) measured
    26.5 -> 86 GFLOP/s for an fp32 2048^3 matmul on 1 thread, 275 -> 144 ms for the batch-8
    BLOOM-560m LM head. MKL reads the variable when its first routine runs, not at `import paddle`
    (measured with MKL_VERBOSE=1: set after the import, before the first matmul, MKL announces its
    AVX2 kernels), so the entry points call this first thing: runtime.use_all_cores, the deploy
    and serving mains. Intel CPUs keep MKL's own choice (AVX-512 where present).
    Tests: test_cpu_runtime.py::test_entry_points_give_mkl_its_avx2_kernels_on_amd,
    test_export.py::test_mkl_avx2_only_on_amd_and_never_over_the_user.
    """
    if "MKL_DEBUG_CPU_TYPE" in os.environ or cpu_vendor() != "AuthenticAMD":
        return False
    if "avx2" not in _cpuinfo_field("flags").split():
        return False
    os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    return True


def user_thread_count() -> Optional[int]:
    """OMP_NUM_THREADS as the user set it, or None when the user did not set it.

    Defect: `import paddle` writes OMP_NUM_THREADS=1 into os.environ when it is unset
    (paddle/base/__init__.py), so after the import os.environ cannot tell Paddle's default from a
    user's "1", and honouring it ran every training step on one thread (training 2.9x slower on 2
    cores). The environment the process was started with (/proc/self/environ) still holds only
    what the user set. Test: test_cpu_runtime.py::test_all_cores_despite_the_omp_setting_import_paddle_writes.
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

    Defect: Paddle's CPU allocator passes every tensor to malloc and frees it as soon as it dies.
    glibc serves blocks above 32 MiB (the ceiling of its adaptive threshold) with a fresh mmap and
    unmaps them on free, so each large tensor of every step - the [tokens, vocab] logits, their
    gradients, the embedding gradient - is page-faulted in and zeroed by the kernel again.
    Measured on a 2-core EPYC: a [1024, 32000] fp32 multiply took 130-180 ms, 20-75 ms with this.
    Returns False where there is no glibc (the default allocator then stays).
    Test: test_cpu_runtime.py::test_large_tensors_reuse_freed_memory_instead_of_faulting_it_in.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, limit_bytes))
    except (OSError, AttributeError):
        return False


def contiguous_cpu_kernels() -> None:
    """Let transpose / split / squeeze return contiguous tensors (call it on CPU-only machines).

    Defect: with Paddle's default FLAGS_use_stride_kernel=1 they return strided views, and every
    later CPU kernel (matmul, the gradients of squeeze and reshape) first makes its input
    contiguous with a generic element-by-element strided copy: a BLOOM attention block of shape
    (a) took 60-90 ms forward + backward on 2 cores, 18-20 ms with copying transposes, and the
    whole training step ~11% less. Nothing here writes through a view in place, so results are
    identical. Test: test_cpu_runtime.py::test_layout_ops_return_contiguous_tensors_on_cpu.
    """
    paddle.set_flags({"FLAGS_use_stride_kernel": False})


# --- the model ------------------------------------------------------------------------------


def bloom_weight_init(std: float) -> paddle.ParamAttr:
    """BLOOM's initialisation, normal(0, std), for every weight matrix of the model.

    Defect: paddlenlp 3.0.0b4's `BloomPreTrainedModel._init_weights` writes zeros to the Linear
    weights of qkv, dense, dense_h_to_4h and dense_4h_to_h, so a fresh model has all-zero attention
    and MLP weights and any "A equals B" test on it proves nothing. Our layers take this instead.
    Test: test_foundation.py::test_every_linear_weight_is_nonzero_and_initialised_like_bloom.
    """
    return paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=std))


def affine(x, weight, bias):
    """x @ weight + bias over the last axis of x.

    Defects: on CPU in eager mode F.linear (matmul + broadcast add) sums the bias gradient in a
    separate broadcast-reduce pass; addmm over the flattened tokens sums it inside the GEMM
    kernel's pass (forward + backward of [1024, 512] x [512, 2048] on 2 cores: 60 ms with
    F.linear, 46 ms with addmm, 38 ms without a bias). But Paddle 3.3.1's addmm backward
    segfaults when its `input` (the bias) needs no gradient, so a frozen bias (LoRA) keeps
    F.linear; so do static graphs (export) and GPUs, whose fusion passes know it.
    Test: test_cpu_runtime.py::test_affine_matches_linear_and_survives_a_frozen_bias.
    """
    if bias.stop_gradient or not (paddle.in_dynamic_mode() and x.place.is_cpu_place()):
        return F.linear(x, weight, bias)
    y = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
    return y.reshape(list(x.shape[:-1]) + [weight.shape[-1]])


def recomputed_block(block, x, bias, layer_past):
    """block(x, bias, layer_past)'s hidden state under fleet's recompute (activation checkpointing).

    Defects of paddle 3.3.1's `fleet.utils.recompute`: it runs a block's backward only if an input
    needs a gradient (with a frozen embedding - LoRA, prefix - none would, and the adapters would
    silently get no gradient), it passes gradients only to tensor arguments (a prefix's cache
    must get its gradient), and nested (k, v) outputs crash its PyLayer. So x is marked as needing
    a gradient, the cache goes in as two tensors and only the hidden state comes out.
    Tests: test_finetune.py::test_lora_continue_and_merge_weights, test_prefix_matters_on_a_trained_model.
    """
    x.stop_gradient = False
    past_key, past_value = (None, None) if layer_past is None else layer_past
    return recompute(_hidden_state, block, x, bias, past_key, past_value)


def _hidden_state(block, x, bias, past_key, past_value):
    return block(x, bias, None if past_key is None else (past_key, past_value))[0]


# --- distributed runs and their checkpoints -------------------------------------------------

_GROUP_STORES = []  # the private stores stay alive as long as their groups (their comm contexts use them)


@contextmanager
def private_gloo_rendezvous():
    """While fleet creates its groups, every gloo group meets in a key space of its own (use on CPU).

    Defect (paddle 3.3.1 on gloo): ProcessGroupGloo connects its full mesh through the launcher's
    shared TCP store under keys that are only the group-local ranks ("0", "1", ...), with no group
    id in them (only its comm context uses a per-group prefix). Groups on disjoint ranks then read
    each other's addresses: fleet creates the TP groups [0, 1] and [2, 3] of TP=2 x DP=2 at the
    same moment, and a group created after another can read the earlier one's value before its own
    member overwrites it. Ranks connect to the wrong peer: `gloo/transport/tcp/pair.cc: connect
    [127.0.0.1]:N: Connection refused`, `address.cc: sizeof(impl_) == bytes.size(). 136 vs 45`, or
    a TIMEOUT. Every launch with two groups of one kind failed (4 processes at TP=2; 2-process
    launches never have two; serialising the creations still failed 1 run in 10). Here each new
    group's first member serves a TCP store of its own for the rendezvous and publishes its
    address in the shared store under the group id. NCCL groups exchange ids under per-group keys.
    Test: test_sharding.py::test_two_nodes_tp2_dp2_equal_one_node_and_resume_in_one_process.
    """
    original = collective._new_process_group_impl

    def with_private_store(backend, store, rank, world_size, *args, group_id=0, **kwargs):
        if backend != "gloo" or group_id == 0:  # the world group is the only one created alone
            return original(backend, store, rank, world_size, *args, group_id=group_id, **kwargs)
        key = f"paddlebloom/gloo_rendezvous/{group_id}"
        if rank == 0:
            host = os.environ.get("PADDLE_CURRENT_ENDPOINT", "127.0.0.1:0").rsplit(":", 1)[0]
            with socket.socket() as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
            store.set(key, f"{host}:{port}".encode())
            own = core.TCPStore(host, port, True, world_size, 900)
        else:
            store.wait(key)
            host, port = bytes(store.get(key)).decode().rsplit(":", 1)
            own = core.TCPStore(host, int(port), False, world_size, 900)
        _GROUP_STORES.append(own)
        return original(backend, own, rank, world_size, *args, group_id=group_id, **kwargs)

    collective._new_process_group_impl = with_private_store
    try:
        yield
    finally:
        collective._new_process_group_impl = original


def optimizer_state_by_parameter_path(state: dict, model) -> dict:
    """An optimizer state dict keyed by parameter path (bloom.h.0.mlp.dense_4h_to_h.weight/moment1_0),
    the form checkpoints hold; `optimizer_state_by_tensor_name` turns it back.

    Defect: Paddle keys optimizer state by generated tensor names (linear_7.w_0_moment1_0) that
    count the layers the process built before, so a process that built another model first (a
    test, a DPO reference model) finds no state for its parameters. Keys that name no parameter
    (beta powers of files written before this, the learning-rate scheduler) stay as they are.
    Test: test_sharding.py::test_two_nodes_tp2_dp2_equal_one_node_and_resume_in_one_process
    (resumes in the test process, which built other models first).
    """
    paths = {p.name: path for path, p in model.named_parameters()}
    by_length = sorted(paths, key=len, reverse=True)
    out = {}
    for key, value in state.items():
        tensor = next((n for n in by_length if key.startswith(n + "_")), None)
        out[key if tensor is None else f"{paths[tensor]}/{key[len(tensor) + 1 :]}"] = value
    return out


def optimizer_state_by_tensor_name(state: dict, model) -> dict:
    """The inverse of `optimizer_state_by_parameter_path`, for this process's tensor names; files
    written before checkpoints keyed state by parameter path load as they are."""
    names = {path: p.name for path, p in model.named_parameters()}
    out = {}
    for key, value in state.items():
        path, _, accumulator = key.rpartition("/")
        out[f"{names[path]}_{accumulator}" if path in names else key] = value
    return out


def check_optimizer_state_covers(state: dict, optimizer, path: str) -> None:
    """Refuse an optimizer state (numpy arrays keyed by tensor name) that lacks a trained parameter's entries.

    Defect: Paddle 3.3.1's `Optimizer.set_state_dict` checks nothing: it keeps entries that match
    no parameter, and a parameter without entries fails only at the first optimizer step of the
    resumed run, with `AssertionError: Optimizer set error, layer_norm_29.w_0_moment1_0 should in
    state dict` (a traceback naming a generated tensor name). Raises ValueError naming the file
    and the parameter before anything runs.
    Test: test_sharding.py::test_resume_refuses_optimizer_state_for_other_parameters.
    """
    if not any(isinstance(v, np.ndarray) for v in state.values()):
        return  # written before the first optimizer step
    for p in optimizer._parameter_list:
        if not any(k.startswith(p.name + "_") for k in state):
            raise ValueError(
                f"{path}: no optimizer state for parameter {p.name} {list(p.shape)}: "
                "the checkpoint was written for other trained parameters"
            )


# --- custom ops and exported programs -------------------------------------------------------


def custom_op_module(library, op_names: Sequence[str]) -> types.ModuleType:
    """The Python API of the custom ops registered from `library`: Paddle's own generated wrappers
    (dygraph and to_static/PIR), built in memory.

    Defect: paddle 3.3.1's loader (`cpp_extension.load`, `_generate_python_module`) writes the
    wrappers to BUILD_DIR/NAME_<thread id>.py, imports that file and deletes it at exit, which
    races between processes that share the build directory (tensor-parallel ranks, a test and its
    subprocesses). Nothing is written here.
    Test: test_ops.py::test_loading_the_ops_writes_nothing_in_the_build_directory.
    """
    module = types.ModuleType("paddlebloom_ops")
    module.__file__ = str(library)
    for name in sorted(op_names):
        exec(compile(_custom_api_content(name), f"<paddlebloom_ops.{name}>", "exec"), module.__dict__)
    return module


def find_model(model_dir: str, model_prefix: str):
    """(program, params) of an exported model: Paddle 3's PIR `NAME.json` or legacy `NAME.pdmodel`.

    Defect: Paddle 3's `jit.save` writes `NAME.json` + `NAME.pdiparams`, not `.pdmodel`, and
    paddlenlp 3.0.0b4's deployment scripts hard-code `.pdmodel`; loaders must accept both.
    Tests: test_export.py::test_find_model_reads_legacy_pdmodel and the `bloom.json` assertion of
    test_static_greedy_equals_dynamic_batch_1_and_padded_batch_4.
    """
    params = os.path.join(model_dir, model_prefix + ".pdiparams")
    for ext in (".json", ".pdmodel"):
        program = os.path.join(model_dir, model_prefix + ext)
        if os.path.isfile(program):
            if not os.path.isfile(params):
                raise FileNotFoundError(f"{program}: found, but its parameters {params} are missing")
            return program, params
    raise FileNotFoundError(
        f"{model_dir}: no exported model {model_prefix}.json or {model_prefix}.pdmodel "
        "(export with export/export_generation_model.py)"
    )


def onednn_only_when_asked(config, enabled: bool) -> None:
    """Turn oneDNN on or off in a `paddle.inference.Config` as the user asked.

    Defect: Paddle 3.3.1's inference Config has oneDNN on out of the box (`mkldnn_enabled()` is
    True on a fresh Config), so leaving it alone when --enable_mkldnn is not given would run
    oneDNN anyway: the flag must be applied both ways.
    Test: test_cpu_runtime.py::test_onednn_is_off_unless_asked.
    """
    if enabled:
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()
