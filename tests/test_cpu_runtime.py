"""Process-wide workarounds (paddlebloom/workarounds.py) and what every entry point sets up: each
test fails if its workaround is removed. Most run in a fresh process, because what they guard
happens at `import paddle` or is process-wide."""

import ast
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from paddlebloom import workarounds
from paddlebloom.deploy.predictor import make_config

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
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=300
    )
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
from paddlebloom.workarounds import affine
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
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def run_code(code, *args, **env):
    env = dict({k: v for k, v in os.environ.items() if k != "MKL_DEBUG_CPU_TYPE"}, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)


MKL_PROBE = """
import paddle
from paddlebloom import runtime, workarounds
workarounds.cpu_vendor = lambda: "AuthenticAMD"  # whatever this machine is: take the AMD path
workarounds._cpuinfo_field = lambda name: "sse4_2 avx avx2 fma" if name == "flags" else ""
runtime.use_all_cores()
a = paddle.randn([64, 64])
(a @ a).numpy()
"""


def test_entry_points_give_mkl_its_avx2_kernels_on_amd():
    # Paddle's mklml takes a generic path on AMD unless MKL_DEBUG_CPU_TYPE=5 is set before its first
    # routine; use_all_cores, first thing in every computing main, sets it (not the package import).
    # MKL_VERBOSE's banner names the kernels MKL chose (AVX-512 on an Intel machine without it).
    if "avx2" not in workarounds._cpuinfo_field("flags").split():
        pytest.skip("this CPU has no AVX2: MKL's AVX2 kernels cannot run here")
    out = run_code(MKL_PROBE, MKL_VERBOSE="1")
    banner = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("MKL_VERBOSE Intel(R) MKL")]
    assert out.returncode == 0 and banner, out.stderr[-2000:]
    assert "(Intel(R) AVX2) enabled processors" in banner[0], banner[0]


MEMORY_PROBE = """
import gc, resource, sys
import paddle
from paddlebloom import runtime
if sys.argv[1] == "without":
    runtime.reuse_freed_memory = lambda: False
runtime.use_all_cores()
n = 16 << 20  # 64 MiB of float32: above the 32 MiB where glibc maps each block afresh
faults = []
for i in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = paddle.full([n], float(i))
    del x
    gc.collect()  # a tensor can outlive `del` until the collector runs (it then holds its block)
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (n * 4 // 4096))
print(min(faults[1:]))  # page faults per page of one tensor, after the first
"""


def test_large_tensors_reuse_freed_memory_instead_of_faulting_it_in():
    # Without workarounds.reuse_freed_memory every page of every large tensor is faulted in (and
    # zeroed by the kernel) again: one fault per page of each 64 MiB tensor.
    faults = {case: float(run_code(MEMORY_PROBE, case).stdout.strip().splitlines()[-1]) for case in ("with", "without")}
    assert faults["without"] > 0.9 and faults["with"] < 0.05, faults


def test_onednn_is_off_unless_asked(tmp_path):
    # Paddle 3.3.1's inference Config has oneDNN on out of the box: --enable_mkldnn must work both ways.
    program, params = tmp_path / "bloom.json", tmp_path / "bloom.pdiparams"
    program.write_text("{}")
    params.write_bytes(b"")
    assert not make_config(str(program), str(params), enable_mkldnn=False).mkldnn_enabled()
    assert make_config(str(program), str(params), enable_mkldnn=True).mkldnn_enabled()


ERROR_PROBE = """
import sys
from paddlebloom.cli import run_main
from paddlebloom.data.readers import DataError
errors = {"value": ValueError("--top_p 2.0: must be in (0, 1]\\nsecond line"),
          "data": DataError("in.jsonl:3: no 'src' field"),
          "missing": FileNotFoundError("ckpt: no config.json"), "bug": KeyError("src")}
def body():
    raise errors[sys.argv[1]]
sys.exit(run_main("prog", body))
"""


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
    for case, line in (
        ("value", "--top_p 2.0: must be in (0, 1]"),
        ("data", "in.jsonl:3: no 'src' field"),
        ("missing", "ckpt: no config.json"),
    ):
        out = run_code(ERROR_PROBE, case)
        assert (out.returncode, out.stderr) == (2, f"prog: error: {line}\n"), out.stderr
    bug = run_code(ERROR_PROBE, "bug")  # a KeyError is a bug, not bad input: its traceback stays
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'src'" in bug.stderr, bug.stderr


def test_scripts_start_without_paddles_import_warning():
    # `import paddle` warns that ccache is missing; each thin script filters that one message first.
    for script in ("finetune/finetune_generation.py", "deploy/serve.py"):
        out = subprocess.run(
            [sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0 and "No ccache found" not in out.stderr, out.stderr[-2000:]


def test_every_workaround_names_a_test_that_exists_and_is_in_the_readme_table():
    # One function per upstream defect: its docstring names the defect and the tests that fail
    # without it, and the README's defects table points to it (and to nothing that is gone).
    with open(os.path.join(ROOT, "paddlebloom", "workarounds.py"), encoding="utf-8") as f:
        module = ast.parse(f.read())
    tests = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
        with open(path, encoding="utf-8") as f:
            tests.update(re.findall(r"^def (test_\w+)", f.read(), re.M))
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        table = f.read().split("## Upstream defects", 1)[1].split("\n## ", 1)[0]
    workarounds = {
        n.name: ast.get_docstring(n) or ""
        for n in module.body
        if isinstance(n, ast.FunctionDef) and "Defect" in (ast.get_docstring(n) or "")
    }
    assert len(workarounds) >= 12, sorted(workarounds)
    for name, doc in workarounds.items():
        named = re.findall(r"\b(test_\w+)\b(?!\.py)", doc)
        assert named and set(named) <= tests, (name, named)
        assert f"workarounds.{name}`" in table, f"README's defects table does not name workarounds.{name}"
    functions = {n.name for n in module.body if isinstance(n, ast.FunctionDef)}
    assert set(re.findall(r"`workarounds\.(\w+)", table)) <= functions
