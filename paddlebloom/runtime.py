"""Process set-up shared by every entry point: CPU threads, quiet logs, the tensor-parallel group.

The scale-out engine is Paddle's fleet: under `python -m paddle.distributed.launch` the
launcher sets PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID and we build fleet's hybrid groups with
`mp_degree = tensor_parallel_degree`, `sharding_degree = sharding_parallel_degree` and the
remaining ranks as data parallel (world = dp x sharding x tensor parallel, as in PaddleNLP).
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import paddle
from paddle.distributed import fleet

from .cli import quiet_upstream_warnings
from .workarounds import (
    contiguous_cpu_kernels,
    prefer_avx2_mkl_on_amd,
    private_gloo_rendezvous,
    reuse_freed_memory,
    user_thread_count,
)


def world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def global_rank() -> int:
    return int(os.environ.get("PADDLE_TRAINER_ID", "0"))


def local_world_size() -> int:
    return int(os.environ.get("PADDLE_LOCAL_SIZE", os.environ.get("PADDLE_TRAINERS_NUM", "1")))


def use_all_cores() -> int:
    """Set up Paddle's CPU runtime for a computing entry point; returns the thread count.

    Call it first thing in a main, before the first MKL routine. Paddle's eager CPU kernels run
    with one math-library thread out of the box (measured: a 2048x2048 fp32 matmul at 26 GFLOP/s
    with 1 thread vs 54 GFLOP/s with 2 on a 2-core machine): this gives them every core this
    process may use (processes started together on one machine, tensor parallel ranks, share
    them). An explicit OMP_NUM_THREADS from the user wins. Also applies the CPU-runtime
    workarounds (paddlebloom/workarounds.py): the user's thread count read past the "1" that
    `import paddle` writes, MKL's AVX2 kernels on AMD, freed tensor memory kept for reuse, and
    contiguous layout ops on CPU-only machines.
    """
    prefer_avx2_mkl_on_amd()
    threads = user_thread_count()
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, local_world_size()))
        # Paddle's "1" must not reach child processes (a resumed run, a worker) as if the user
        # had chosen it: they would train on one thread and round differently from this one.
        os.environ.pop("OMP_NUM_THREADS", None)
    paddle.base.core.set_num_threads(threads)
    reuse_freed_memory()
    if device_for_backend() == "cpu":  # GPU runs keep Paddle's strided views
        contiguous_cpu_kernels()
    return threads


def quiet() -> None:
    """Silence upstream noise that buries the progress bars users actually read (Paddle's C++
    info logs in this process's children, the known-noisy upstream warnings: cli.UPSTREAM_NOISE)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    quiet_upstream_warnings()


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


def single_process_context() -> ParallelContext:
    """The context of a model built without one: a single process.

    Refused once init_parallel has placed this process among several ranks: such a model would
    silently get TP=1 shapes (and every rank would write its files); pass the context instead.
    """
    ctx = parallel_context()
    if ctx.tp_degree * ctx.dp_degree * ctx.sharding_degree > 1:
        raise ValueError(
            f"this process is one of {ctx.tp_degree * ctx.dp_degree * ctx.sharding_degree} ranks "
            f"(tensor_parallel_degree {ctx.tp_degree}): build the model with parallel=init_parallel(...)'s context"
        )
    return ParallelContext()


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
        raise ValueError(
            f"--sharding_parallel_degree {sd} x --tensor_parallel_degree {tp} does not divide the {n} launched "
            "processes"
        )
    paddle.set_device(
        device_for_backend() if device_for_backend() == "cpu" else f"gpu:{os.environ.get('FLAGS_selected_gpus', '0')}"
    )
    strategy = fleet.DistributedStrategy()
    strategy.hybrid_configs = {"dp_degree": n // (tp * sd), "mp_degree": tp, "pp_degree": 1, "sharding_degree": sd}
    with private_gloo_rendezvous() if device_for_backend() == "cpu" else nullcontext():
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
