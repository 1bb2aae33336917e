"""Build every paddlebloom/ops/csrc/*.cc into one Paddle C++ extension, `paddlebloom_ops`.

`python -m paddlebloom.ops.build` (run by `make install`) builds it; `paddlebloom.ops.load()`
builds on first use when the install step did not. The library goes to
paddlebloom/ops/_build/paddlebloom_ops-<key>/, where <key> hashes the sources, flags, compiler and
the Paddle installation, so an edited source or another venv gets a fresh build and a stale one is
never loaded. Nothing is written to ~/.cache (Paddle's default extension directory).

No -march: the same build may run on another CPU (AVX2-only AMD, AVX-512, AMX machines); the
sources pick their kernels by cpuid at run time (csrc/common.h). The OpenMP runtime is Paddle's
own libiomp5 when the wheel ships it, so the ops share MKL/oneDNN's warm thread pool.

The compile runs in a child process (Paddle's `cpp_extension.load` prints and raises without the
compiler's message); a failure becomes OpsUnavailable with the first compiler error line.
"""

import argparse
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from paddlebloom.ops import OpsUnavailable

NAME = "paddlebloom_ops"
PACKAGE_DIR = Path(__file__).resolve().parent
# Overridable for tests (a broken copy of the sources must not touch the real build).
SOURCE_DIR = Path(os.environ.get("PADDLEBLOOM_OPS_SOURCES") or PACKAGE_DIR / "csrc")
BUILD_ROOT = Path(os.environ.get("PADDLEBLOOM_OPS_BUILD_DIR") or PACKAGE_DIR / "_build")
CXX_FLAGS = ["-O3", "-fopenmp", "-std=c++17"]
PREFIX = "paddlebloom C++ ops could not be built: "


def _paddle_dir() -> Path:
    spec = importlib.util.find_spec("paddle")  # where it is installed, without importing it
    if spec is None or not spec.origin:
        raise OpsUnavailable(PREFIX + "paddle is not installed")
    return Path(spec.origin).resolve().parent


def _paddle_version() -> str:
    for dist in ("paddlepaddle", "paddlepaddle-gpu"):
        try:
            return dist + "==" + importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def link_flags() -> list:
    """Link against Paddle's libiomp5 (one OpenMP pool with MKL/oneDNN), else the compiler's."""
    libs = _paddle_dir() / "libs"
    if (libs / "libiomp5.so").exists():
        return [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}"]
    return ["-fopenmp"]


def compiler() -> str:
    """The C++ compiler the build will run: $CXX if set, else Python's configured CC."""
    return os.environ.get("CXX") or sysconfig.get_config_var("CC") or "c++"


def sources() -> list:
    return sorted(SOURCE_DIR.glob("*.cc"))


def build_key() -> str:
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        if path.suffix in (".cc", ".h", ".inc"):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    parts = [CXX_FLAGS, link_flags(), compiler(), _paddle_version(), str(_paddle_dir()), sys.version]
    h.update(json.dumps(parts).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    return BUILD_ROOT / f"{NAME}-{build_key()}"


def library_path() -> Path:
    """Where the built library is (paddle's load() puts it at DIR/NAME/NAME.so)."""
    return build_dir() / NAME / f"{NAME}.so"


# Run in the child: Paddle's own JIT builder (the flags Paddle's headers need) with our directory.
_CHILD = """
import json, sys, warnings
warnings.filterwarnings("ignore")
from paddle.utils.cpp_extension import load
a = json.loads(sys.argv[1])
load(name=a["name"], sources=a["sources"], extra_cxx_cflags=a["cflags"], extra_ldflags=a["ldflags"],
     build_directory=a["dir"], verbose=True)
"""


def first_error(log: str) -> str:
    """The line of a build log that says why it failed."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pattern in (r"\berror:", r"\berror\b", r"not found|No such file"):
        for ln in lines:
            if re.search(pattern, ln, re.IGNORECASE) and not ln.startswith(("Traceback", "File ")):
                return ln
    return lines[-1] if lines else "the build printed nothing"


def build(force: bool = False, verbose: bool = False) -> Path:
    """Build the extension unless this exact build exists; returns the library path."""
    lib = library_path()
    if lib.exists() and not force:
        return lib
    cxx = compiler()
    if shutil.which(shlex.split(cxx)[0]) is None:
        raise OpsUnavailable(PREFIX + f"C++ compiler {shlex.split(cxx)[0]!r} not found (set CXX to a C++17 compiler)")
    srcs = sources()
    if not srcs:
        raise OpsUnavailable(PREFIX + f"no sources in {SOURCE_DIR}")
    try:
        BUILD_ROOT.mkdir(parents=True, exist_ok=True)
        lock = open(BUILD_ROOT / ".lock", "w")
    except OSError as e:
        raise OpsUnavailable(PREFIX + f"cannot write the build directory {BUILD_ROOT}: {e.strerror}") from e
    # Two processes starting at once (tests, tensor-parallel ranks) build once, the other waits.
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.exists() and not force:
            return lib
        out_dir = build_dir()
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        env = dict(os.environ)
        env.setdefault("MAX_JOBS", str(max(1, min(len(srcs), os.cpu_count() or 1))))  # sources in parallel
        if os.environ.get("CXX"):
            env["CC"] = os.environ["CXX"]  # setuptools compiles .cc files with CC
        args = {
            "name": NAME,
            "sources": [str(s) for s in srcs],
            "cflags": CXX_FLAGS,
            "ldflags": link_flags(),
            "dir": str(out_dir),
        }
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        (out_dir / "build.log").write_text(log)
        if verbose:
            print(log)
        if proc.returncode != 0 or not lib.exists():
            raise OpsUnavailable(PREFIX + first_error(log) + f" (full log: {out_dir / 'build.log'})")
        for stale in BUILD_ROOT.glob(f"{NAME}-*"):  # older sources' builds; loaded copies stay mapped
            if stale != out_dir:
                shutil.rmtree(stale, ignore_errors=True)
    return lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if this build exists")
    parser.add_argument("--verbose", action="store_true", help="print the compiler output")
    args = parser.parse_args(argv)
    try:
        print(build(force=args.force, verbose=args.verbose))
    except OpsUnavailable as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
