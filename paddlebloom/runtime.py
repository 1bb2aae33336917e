"""Process set-up shared by every entry point: CPU threads, quiet logs, the tensor-parallel group.

The scale-out engine is Paddle's fleet: under `python -m paddle.distributed.launch` the
launcher sets PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID and we build fleet's hybrid groups with
`mp_degree = tensor_parallel_degree`, `sharding_degree = sharding_parallel_degree` and the
remaining ranks as data parallel (world = dp x sharding x tensor parallel, as in PaddleNLP).
"""
import os
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

# Paddle warns at import time that ccache is missing (it only matters for compiling custom
# ops): filter it before the import so it does not bury every script's output.
warnings.filterwarnings("ignore", message=".*No ccache found.*")

import paddle  # noqa: E402

from .cpu import reuse_freed_memory, user_thread_count  # noqa: E402


def world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def global_rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def local_world_size() -> int:
    return int(os.environ.get("PADDLE_LOCAL_SIZE", os.environ.get("PADDLE_TRAINERS_NUM", "1")))


def use_all_cores() -> int:
    """Give Paddle's CPU kernels every core this process may use; returns the thread count.

    Paddle's eager CPU kernels run with one math-library thread out of the box (measured: a
    2048x2048 fp32 matmul at 26 GFLOP/s with 1 thread vs 54 GFLOP/s with 2 on a 2-core machine).
    Processes started together on one machine (tensor parallel ranks) share the cores.
    An explicit OMP_NUM_THREADS from the user wins (read past the "1" that `import paddle`
    writes, see cpu.user_thread_count). Also keeps freed tensor memory for reuse
    (cpu.reuse_freed_memory) and makes CPU layout ops copy (contiguous_cpu_kernels).
    """
    threads = user_thread_count()
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, local_world_size()))
        # Paddle's "1" must not reach child processes (a resumed run, a worker) as if the user
        # had chosen it: they would train on one thread and round differently from this one.
        os.environ.pop("OMP_NUM_THREADS", None)
    paddle.base.core.set_num_threads(threads)
    reuse_freed_memory()
    contiguous_cpu_kernels()
    return threads


def contiguous_cpu_kernels() -> None:
    """On a CPU-only machine, let transpose / split / squeeze return contiguous tensors.

    With Paddle's default FLAGS_use_stride_kernel=1 they return strided views, and every later
    kernel (matmul, the gradients of squeeze and reshape) first makes its input contiguous with
    a generic element-by-element strided copy: a BLOOM attention block of shape (a) took 60-90 ms
    forward + backward on 2 cores, 18-20 ms with copying transposes, and the whole training step
    ~11% less. Nothing here writes through a view in place, so results are identical. GPU runs
    keep Paddle's default.
    """
    if device_for_backend() == "cpu":
        paddle.set_flags({"FLAGS_use_stride_kernel": False})


def quiet() -> None:
    """Silence import-time noise that buries the progress bars users actually read."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


@dataclass
class ParallelContext:
    """Where this process sits: tensor-parallel rank/degree, data-parallel rank/degree."""

    tp_degree: int = 1
    tp_rank: int = 0
    dp_degree: int = 1
    dp_rank: int = 0
    tp_group: Optional[object] = None
    dp_group: Optional[object] = None
    backend: str = "none"
    sharding_degree: int = 1
    sharding_rank: int = 0
    sharding_group: Optional[object] = None

    @property
    def is_main(self) -> bool:
        return self.tp_rank == 0 and self.dp_rank == 0 and self.sharding_rank == 0

    @property
    def data_degree(self) -> int:
        """Ranks reading different data: sharding ranks are data parallel too (ZeRO)."""
        return self.dp_degree * self.sharding_degree

    @property
    def data_rank(self) -> int:
        """PaddleNLP's dataset_rank: sharding_degree * dp_rank + sharding_rank."""
        return self.sharding_degree * self.dp_rank + self.sharding_rank


_CONTEXT = ParallelContext()


def parallel_context() -> ParallelContext:
    return _CONTEXT


def device_for_backend() -> str:
    return "gpu" if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else "cpu"


def init_parallel(tensor_parallel_degree: int = 1, sharding_parallel_degree: int = 1) -> ParallelContext:
    """Initialise fleet when launched with several ranks; a no-op in a single process.

    Raises ValueError when the world cannot be split into the requested degrees.
    """
    global _CONTEXT
    n = world_size()
    tp = max(1, int(tensor_parallel_degree))
    sd = max(1, int(sharding_parallel_degree))
    if n == 1:
        for flag, degree in (("--tensor_parallel_degree", tp), ("--sharding_parallel_degree", sd)):
            if degree != 1:
                raise ValueError(
                    f"{flag} {degree} needs {degree} processes: run under "
                    f"`python -m paddle.distributed.launch --nproc_per_node {degree} ...`"
                )
        _CONTEXT = ParallelContext()
        return _CONTEXT
    if n % tp != 0:
        raise ValueError(f"--tensor_parallel_degree {tp} does not divide the {n} launched processes")
    if n % (tp * sd) != 0:
        raise ValueError(f"--sharding_parallel_degree {sd} x --tensor_parallel_degree {tp} does not divide the {n} launched processes")
    from paddle.distributed import fleet

    paddle.set_device(device_for_backend() if device_for_backend() == "cpu" else f"gpu:{os.environ.get('FLAGS_selected_gpus', '0')}")
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": n // (tp * sd), "mp_degree": tp, "pp_degree": 1, "sharding_degree": sd}
    with private_gloo_rendezvous():
        fleet.init(is_collective=True, strategy=strategy)
    hcg = fleet.get_hybrid_communicate_group()
    backend = paddle.distributed.get_backend() if hasattr(paddle.distributed, "get_backend") else "unknown"
    _CONTEXT = ParallelContext(
        tp_degree=tp,
        tp_rank=hcg.get_model_parallel_rank(),
        dp_degree=hcg.get_data_parallel_world_size(),
        dp_rank=hcg.get_data_parallel_rank(),
        tp_group=hcg.get_model_parallel_group(),
        dp_group=hcg.get_data_parallel_group(),
        backend=str(backend).lower(),
        sharding_degree=sd,
        sharding_rank=hcg.get_sharding_parallel_rank(),
        sharding_group=hcg.get_sharding_parallel_group(),
    )
    return _CONTEXT


@contextmanager
def private_gloo_rendezvous():
    """Workaround (paddle 3.3.1 on gloo): every gloo group meets in a key space of its own.

    ProcessGroupGloo connects its full mesh through the launcher's shared TCP store under keys
    that are only the group-local ranks ("0", "1", ...), with no group id in them (only its comm
    context uses a per-group prefix). Groups on disjoint ranks then read each other's addresses:
    fleet creates the TP groups [0, 1] and [2, 3] of TP=2 x DP=2 at the same moment, and a group
    created after another can read the earlier one's value before its own member overwrites it.
    Ranks connect to the wrong peer: `gloo/transport/tcp/pair.cc: connect [127.0.0.1]:N:
    Connection refused`, `address.cc: sizeof(impl_) == bytes.size(). 136 vs 45`, or a TIMEOUT.
    Every launch with two groups of one kind failed (4 processes at TP=2; 2-process launches
    never have two; serialising the creations still failed 1 run in 10). Here each new group's
    first member serves a TCP store of its own for the rendezvous and publishes its address in
    the shared store under the group id. NCCL groups exchange ids under per-group keys already.
    """
    from paddle.base import core
    from paddle.distributed import collective

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
        _GROUP_STORES.append(own)  # the group keeps using it (its comm context's store)
        return original(backend, own, rank, world_size, *args, group_id=group_id, **kwargs)

    if device_for_backend() != "cpu":
        yield
        return
    collective._new_process_group_impl = with_private_store
    try:
        yield
    finally:
        collective._new_process_group_impl = original


_GROUP_STORES = []
