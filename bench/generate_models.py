"""The models the decoding bench runs, all made from ONE random bloom-560m-shaped checkpoint:
our static exports (fp32, bf16, weight-only int8), the HF copy (safetensors + tokenizer files) and
the CTranslate2 conversions (float32, int8).

    python bench/generate_models.py      # builds whatever is missing; prints {name: dir or "failed: ..."}

Each artefact is reused when present. Our exports also record a fingerprint of the source that
made them and are rebuilt when it changes: the exporter and the engine are under active work, and
a stale export would silently measure yesterday's program. An artefact that cannot be built is
returned as "failed: <one line>" so the bench reports that system's row and goes on.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.common import SHAPES  # noqa: E402
from bench.machine import OURS, PEER  # noqa: E402

WORK = os.path.join(ROOT, "runs", "bench", "bloom560m")
# Our exports: directory name -> extra export flags.
EXPORTS = {"static": [], "static-bf16": ["--dtype", "bfloat16"], "static-int8": ["--quant_type", "weight_only_int8"]}
CT2 = {"ct2-float32": "float32", "ct2-int8": "int8"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def one_line(text: str) -> str:
    """The line of a traceback or log that says what went wrong (the last non-empty one)."""
    lines = [s.strip() for s in (text or "").strip().splitlines() if s.strip()]
    return lines[-1][:300] if lines else "no output"


def _run(cmd, timeout=3600) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="3")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(one_line(proc.stderr) if proc.stderr.strip() else one_line(proc.stdout))


def source_fingerprint() -> str:
    """Hash of every Python file of the package and the export script: what an export depends on."""
    h = hashlib.sha256()
    for base in (os.path.join(ROOT, "paddlebloom"), os.path.join(ROOT, "export")):
        for dirpath, dirnames, filenames in sorted(os.walk(base)):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    h.update(os.path.relpath(path, ROOT).encode())
                    with open(path, "rb") as f:
                        h.update(f.read())
    return h.hexdigest()[:16]


def checkpoint() -> str:
    """The random checkpoint (normal(0, 0.02) weights, fixed seed) every system's model comes from."""
    ckpt = os.path.join(WORK, "ckpt")
    if not os.path.isdir(ckpt):
        s = SHAPES["b"]
        _run(
            [
                OURS,
                "-m",
                "paddlebloom.create_tiny",
                "--output_dir",
                ckpt,
                "--vocab_size",
                str(s["vocab"]),
                "--hidden_size",
                str(s["hidden"]),
                "--n_layer",
                str(s["layers"]),
                "--n_head",
                str(s["heads"]),
                "--seed",
                "0",
            ]
        )
    return ckpt


def our_export(ckpt: str, name: str, fingerprint: str) -> str:
    out = os.path.join(WORK, name)
    stamp = os.path.join(out, ".bench_source")
    if os.path.isdir(out) and os.path.isfile(stamp) and open(stamp).read() == fingerprint:
        return out
    shutil.rmtree(out, ignore_errors=True)
    try:
        _run(
            [
                OURS,
                os.path.join(ROOT, "export", "export_generation_model.py"),
                "--model_name_or_path",
                ckpt,
                "--output_path",
                os.path.join(out, "bloom"),
                *EXPORTS[name],
            ]
        )
    except Exception:
        shutil.rmtree(out, ignore_errors=True)  # a half-written export must not be reused next run
        raise
    with open(stamp, "w") as f:
        f.write(fingerprint)
    return out


def to_hf(ckpt: str, out: str) -> None:
    """Our (PaddleNLP-named, [in, out]) weights as HF BLOOM safetensors ([out, in], `transformer.` prefix)."""
    import numpy as np
    from safetensors.numpy import save_file

    from paddlebloom.atomic import atomic_directory
    from paddlebloom.weights import read_state_for_rank

    state = read_state_for_rank(ckpt)
    hf = {}
    for name, value in state.items():
        transposed = value.ndim == 2 and "word_embeddings" not in name
        hf["transformer." + name[len("bloom.") :]] = np.ascontiguousarray(value.T if transposed else value)
    with atomic_directory(out) as tmp:
        save_file(hf, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(ckpt, "config.json")) as f:
            config = json.load(f)
        config.update({"architectures": ["BloomForCausalLM"], "model_type": "bloom"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        copy_tokenizer(ckpt, tmp)


def copy_tokenizer(ckpt: str, hf_dir: str) -> None:
    """CTranslate2's converter builds its vocabulary from the HF tokenizer, so the HF copy needs the files."""
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(ckpt, name)) and not os.path.isfile(os.path.join(hf_dir, name)):
            shutil.copy(os.path.join(ckpt, name), os.path.join(hf_dir, name))


def hf_copy(ckpt: str) -> str:
    out = os.path.join(WORK, "hf")
    if not os.path.isdir(out):
        to_hf(ckpt, out)
    copy_tokenizer(ckpt, out)  # HF copies made before the CTranslate2 rows lack them
    return out


def ct2_model(hf_dir: str, name: str) -> str:
    out = os.path.join(WORK, name)
    if os.path.isdir(out):
        return out
    converter = os.path.join(os.path.dirname(PEER), "ct2-transformers-converter")
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _run([converter, "--model", hf_dir, "--output_dir", tmp, "--quantization", CT2[name]])
    os.replace(tmp, out)
    return out


def prepare(names=None) -> dict:
    """{artefact name: directory or "failed: reason"}; names=None builds all."""
    wanted = set(names) if names else {"ckpt", "hf", *EXPORTS, *CT2}
    dirs = {}

    def attempt(name, build):
        try:
            dirs[name] = build()
        except Exception as e:  # any failure becomes that system's row, never the bench's end
            dirs[name] = f"failed: {type(e).__name__}: {one_line(str(e))}"

    attempt("ckpt", checkpoint)
    ckpt = dirs["ckpt"]
    if ckpt.startswith("failed"):
        return {name: ckpt for name in wanted}
    fingerprint = source_fingerprint()
    for name in EXPORTS:
        if name in wanted:
            attempt(name, lambda: our_export(ckpt, name, fingerprint))
    if wanted & {"hf", *CT2}:
        attempt("hf", lambda: hf_copy(ckpt))
        for name in CT2:
            if name in wanted:
                if dirs["hf"].startswith("failed"):
                    dirs[name] = dirs["hf"]
                else:
                    attempt(name, lambda: ct2_model(dirs["hf"], name))
    return dirs


if __name__ == "__main__":
    print(json.dumps(prepare(sys.argv[1:] or None), indent=2))
