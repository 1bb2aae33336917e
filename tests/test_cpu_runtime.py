"""Paddle CPU-runtime workarounds (paddlebloom/cpu.py, runtime.py, parallel/layers.affine): each
test fails if its workaround is removed. Each runs in a fresh process, because what they guard
happens at `import paddle` or is process-wide."""
import json
import os
import subprocess
import sys

from conftest import ROOT

PROBE = """
import json, os
import paddle
from paddlebloom.runtime import use_all_cores
threads = use_all_cores()
x = paddle.randn([4, 6]).transpose([1, 0])
print(json.dumps({"threads": threads, "env": os.environ.get("OMP_NUM_THREADS"), "contiguous": x.is_contiguous(),
                  "stride_flag": paddle.get_flags("FLAGS_use_stride_kernel")["FLAGS_use_stride_kernel"]}))
"""


def probe(omp=None):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = ROOT
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_all_cores_despite_the_omp_setting_import_paddle_writes():
    # `import paddle` sets OMP_NUM_THREADS=1 when unset; taking that as the user's choice trained on one core.
    unset = probe()
    assert unset["threads"] == (os.cpu_count() or 1)
    assert unset["env"] is None  # Paddle's "1" is not passed on to child processes either
    assert probe("1")["threads"] == 1  # a user's explicit choice still wins


def test_layout_ops_return_contiguous_tensors_on_cpu():
    # Strided views made every later kernel run a slow element-wise copy (see runtime.contiguous_cpu_kernels).
    result = probe()
    assert result["contiguous"] and result["stride_flag"] is False


def test_affine_matches_linear_and_survives_a_frozen_bias():
    # Paddle 3.3.1's addmm backward segfaults when the bias needs no gradient: affine() must not use it then.
    code = """
import numpy as np, paddle, paddle.nn.functional as F
from paddlebloom.parallel.layers import affine
x = paddle.randn([2, 3, 8]); x.stop_gradient = False
w = paddle.randn([8, 5]); w.stop_gradient = False
for frozen in (False, True):
    b = paddle.randn([5]); b.stop_gradient = frozen
    y = affine(x, w, b)
    np.testing.assert_allclose(y.numpy(), F.linear(x, w, b).numpy(), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert (b.grad is None) == frozen
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
