"""Issues 5 and 12: the exported step program (paddle.inference) decodes exactly as the model,
samples reproducibly, deploys alone.

The reference everywhere is `reference_greedy`: the training model's own forward with a cache grown
by concatenation, one prompt at a time — independent of the engine, its sampler and its kernel."""

import json
import os

import numpy as np
import paddle
import pytest

from conftest import ROOT, run_py
from paddlebloom import corpus, workarounds
from paddlebloom.deploy.predictor import GenerationPredictor, Sampling
from paddlebloom.engine import sampler
from paddlebloom.export.exporter import export_generation
from paddlebloom.generation import GenerationConfig, generate_ids
from paddlebloom.loading import load_model
from paddlebloom.workarounds import find_model

DEPLOY = os.path.join(ROOT, "deploy", "infer_generation.py")
NEW = 12


def reference_greedy(model, prompt, max_new, eos, penalty=1.0):
    """Greedy decoding of one prompt alone (no padding), the cache grown by concatenation; EOS not included.
    The repetition penalty is applied here in plain NumPy (HF's rule) to the seen tokens."""
    out, past, x = [], None, paddle.to_tensor([prompt], dtype="int64")
    with paddle.no_grad():
        for _ in range(max_new):
            mask = paddle.ones([1, len(prompt) + len(out)], dtype="int64")
            res = model(x, attention_mask=mask, past_key_values=past, use_cache=True, last_logits_only=True)
            logits = res.logits[0, -1].numpy().astype(np.float64)
            seen = sorted(set(prompt) | set(out))
            logits[seen] = np.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
            past, token = res.past_key_values, int(logits.argmax())
            if token == eos:
                break
            out.append(token)
            x = paddle.to_tensor([[token]], dtype="int64")
    return out


def dynamic_generate(model, prompts, max_new, eos, pad=3, **kw):
    """Dynamic generation (the engine on the eager model, all prompts in one batch), checked against
    each prompt alone."""
    config = GenerationConfig(
        max_new_tokens=max_new, decode_strategy="greedy_search", eos_token_id=eos, pad_token_id=pad, **kw
    )
    batched = [list(map(int, ids)) for ids in generate_ids(model, prompts, config)]
    assert batched == [reference_greedy(model, p, max_new, eos, kw.get("repetition_penalty", 1.0)) for p in prompts]
    return batched


@pytest.fixture(scope="module")
def prompts(trained_tiny):
    from paddlebloom.tokenizer import BloomTokenizer

    tokenizer = BloomTokenizer.from_pretrained(trained_tiny)
    # Beginnings of long sentences (the model goes on with them), four lengths: a padded batch.
    long_ones = [ids for ids in map(tokenizer.encode, corpus.sentences(40, seed=5)) if len(ids) >= 10][:4]
    assert len(long_ones) == 4
    return [ids[:n] for ids, n in zip(long_ones, (2, 3, 5, 7))]


@pytest.fixture(scope="module")
def adapters(trained_tiny, tmp_path_factory):
    from paddlebloom.lora.config import LoRAConfig
    from paddlebloom.lora.model import LoRA
    from paddlebloom.prefix.config import PrefixConfig
    from paddlebloom.prefix.model import Prefix

    base = tmp_path_factory.mktemp("adapters")
    model, _, _ = load_model(trained_tiny)
    lora = LoRA(LoRAConfig(r=4, target_modules=[".*query_key_value.*", ".*dense_4h_to_h.*"]))
    model = lora.apply(model, seed=3)
    rng = np.random.RandomState(4)
    for name, p in lora.trainable_state(model).items():
        if name.endswith("lora_B"):  # B starts at zero: a trained-looking adapter needs it non-zero
            p.set_value(rng.normal(0, 0.3, size=p.shape).astype("float32"))
    lora.save(model, str(base / "lora"))
    plain, _, _ = load_model(trained_tiny)
    prefix = Prefix(PrefixConfig(num_prefix_tokens=3, prefix_projection=True, prefix_projection_hidden_size=32))
    prefix.save(prefix.apply(plain, seed=5), str(base / "prefix"))
    return {"lora": str(base / "lora"), "prefix": str(base / "prefix")}


@pytest.fixture(scope="module")
def exported(exported_tiny):
    """The base model exported through the script: what users run (conftest; shared with test_serve)."""
    return exported_tiny


def greedy(max_new=NEW):
    return Sampling(decode_strategy="greedy_search", max_new_tokens=max_new)


def test_export_writes_a_self_contained_directory(exported):
    names = set(os.listdir(exported))
    assert {"bloom.json", "bloom.pdiparams", "tokenizer.json", "generation_config.json", "export_info.json"} <= names, (
        names
    )
    assert not [n for n in os.listdir(os.path.dirname(exported)) if ".tmp-" in n]
    assert find_model(exported, "bloom")[0].endswith("bloom.json")  # Paddle 3 writes PIR (workarounds.find_model)
    with open(os.path.join(exported, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == 2
    with open(os.path.join(exported, "export_info.json")) as f:
        info = json.load(f)
    assert (
        info["program"] == "step"
        and info["weights"] == "float32"
        and info["inputs"] == ["input_ids", "cache", "slots", "past", "lens", "picks"]
    )


def test_static_greedy_equals_dynamic_batch_1_and_padded_batch_4(exported, trained_tiny, prompts):
    model, tokenizer, _ = load_model(trained_tiny)
    predictor = GenerationPredictor(exported, "bloom", cpu_threads=1)
    # With the real EOS some rows stop at once, one runs on: early stopping and padding after EOS.
    expected = dynamic_generate(model, prompts, NEW, tokenizer.eos_token_id)
    assert predictor.generate(prompts[:1], greedy()) == expected[:1]
    assert predictor.generate(prompts, greedy()) == expected
    # Without EOS every row decodes NEW tokens: the ragged batch through every step.
    predictor.eos_token_id = -1
    long = dynamic_generate(model, prompts, NEW, -1)
    assert (
        all(len(row) == NEW for row in long)
        and len({tuple(r) for r in long}) == 4
        and all(len(set(r)) > 2 for r in long)
    ), long
    assert predictor.generate(prompts[:1], greedy()) == long[:1]
    assert predictor.generate(prompts, greedy()) == long
    # The repetition penalty's seen-token set (prompt minus padding, then each new token) as well.
    penalised = dynamic_generate(model, prompts, NEW, -1, repetition_penalty=5.0)
    assert penalised != long
    assert predictor.generate(prompts, Sampling(max_new_tokens=NEW, repetition_penalty=5.0)) == penalised


@pytest.mark.parametrize("adapter", ["lora", "prefix"])
def test_adapter_export_equals_dynamic(adapter, adapters, trained_tiny, prompts, tmp_path):
    kw = {"lora_path": adapters["lora"]} if adapter == "lora" else {"prefix_path": adapters["prefix"]}
    model, tokenizer, _ = load_model(trained_tiny, **kw)
    base, _, _ = load_model(trained_tiny)
    x = paddle.to_tensor([prompts[-1]])
    with paddle.no_grad():  # the adapter really changes the model, so equality below is about it
        assert float((model(x).logits - base(x).logits).abs().max()) > 1e-2
    expected = dynamic_generate(model, prompts, NEW, -1)
    export_generation(trained_tiny, str(tmp_path / "out" / "bloom"), **kw)
    assert os.path.isfile(tmp_path / "out" / "prefix_kv.npy") == (adapter == "prefix")
    predictor = GenerationPredictor(str(tmp_path / "out"), "bloom", cpu_threads=1)
    predictor.eos_token_id = -1  # every row runs NEW steps
    assert predictor.generate(prompts[:1], greedy()) == expected[:1]
    assert predictor.generate(prompts, greedy()) == expected


def test_sampling_is_reproducible_and_top_k_1_is_greedy(exported, trained_tiny, prompts):
    predictor = GenerationPredictor(exported, "bloom", cpu_threads=1)
    hot = Sampling(decode_strategy="sampling", max_new_tokens=NEW, temperature=1.5, seed=7)
    first = predictor.generate(prompts, hot)
    assert predictor.generate(prompts, hot) == first
    assert predictor.generate(prompts, Sampling(**{**hot.__dict__, "seed": 8})) != first
    # each request has its own random stream: the answer does not depend on what else is in the batch
    assert [predictor.generate([p], hot)[0] for p in prompts] == first
    assert predictor.generate(
        prompts, Sampling(decode_strategy="sampling", max_new_tokens=NEW, top_k=1, temperature=1.5, seed=7)
    ) == predictor.generate(prompts, greedy())
    # Dynamic prediction (paddlebloom.generation) draws the same tokens for the same seed.
    model, tokenizer, _ = load_model(trained_tiny)
    config = GenerationConfig(
        max_new_tokens=NEW,
        decode_strategy="sampling",
        temperature=1.5,
        seed=7,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert [list(map(int, t)) for t in generate_ids(model, prompts, config)] == first


def test_deploy_reads_any_format_and_runs_without_the_model_class(exported, trained_tiny, tmp_path):
    records = [
        {"instruction": "Say hi", "input": "to Bob", "output": "hi"},
        {"instruction": "Count", "output": "1 2"},
        {"text": "the cat sat"},
        {"conversations": [{"from": "human", "value": "hello"}]},
        {"src": "a b c", "tgt": "d"},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out.jsonl"
    code = (
        "import sys; from paddlebloom.deploy.cli import main; rc = main(sys.argv[1:]); "
        "assert not [m for m in sys.modules if m in ('paddlebloom.model', 'paddlebloom.loading') or "
        "m.startswith('paddlenlp')], 'model code imported'; sys.exit(rc)"
    )
    proc = run_py(
        [
            "-c",
            code,
            "--model_dir",
            exported,
            "--data_file",
            str(data),
            "--output_file",
            str(out),
            "--batch_size",
            "2",
            "--max_new_tokens",
            "6",
            "--cpu_threads",
            "1",
        ]
    )
    assert proc.stderr.count("tokens/s") == 1 and "5 prompts" in proc.stderr, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "prediction"} for r in lines] == records
    # Same text as the dynamic model from the same prompt.
    from paddlebloom.data.formats import prompt_for_prediction

    model, tokenizer, _ = load_model(trained_tiny)
    prompt = tokenizer.encode(prompt_for_prediction(records[2]))
    assert lines[2]["prediction"] == tokenizer.decode(reference_greedy(model, prompt, 6, tokenizer.eos_token_id))


def test_deploy_bad_input_and_unsupported_flags_fail_in_one_line(exported, tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text(
        json.dumps({"instruction": "ok", "output": "x"}) + "\n" + json.dumps({"instruction": 5, "output": "x"}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    proc = run_py([DEPLOY, "--model_dir", exported, "--data_file", str(data), "--output_file", str(out)], check=False)
    assert proc.returncode == 2 and f"{data}:2" in proc.stderr and "instruction" in proc.stderr, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "error" in line.lower()] == [
        proc.stderr.strip().splitlines()[-1]
    ] and not out.exists()
    proc = run_py([DEPLOY, "--model_dir", exported, "--data_file", str(data), "--precision", "int8"], check=False)
    assert proc.returncode == 2 and "--quant_type weight_only_int8" in proc.stderr, proc.stderr
    proc = run_py([DEPLOY, "--model_dir", str(tmp_path), "--data_file", str(data)], check=False)
    assert proc.returncode == 2 and "bloom.json or bloom.pdmodel" in proc.stderr, proc.stderr


def test_export_never_replaces_a_directory_it_did_not_write(trained_tiny, tmp_path):
    """--output_path bloom run in a project folder would make the folder the export: refused, in one
    line, before any work; an earlier export is replaced as before."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine", encoding="utf-8")
    export = os.path.join(ROOT, "export", "export_generation_model.py")
    proc = run_py([export, "--model_name_or_path", trained_tiny, "--output_path", str(project / "bloom")], check=False)
    assert (
        proc.returncode != 0 and "refusing to replace" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    ), proc.stderr
    assert sorted(os.listdir(project)) == ["notes.txt"]
    out = tmp_path / "inference"
    for _ in range(2):
        run_py([export, "--model_name_or_path", trained_tiny, "--output_path", str(out / "bloom")])
    assert "export_info.json" in os.listdir(out)


def test_find_model_reads_legacy_pdmodel(tmp_path):
    (tmp_path / "bloom.pdmodel").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="pdiparams"):
        find_model(str(tmp_path), "bloom")
    (tmp_path / "bloom.pdiparams").write_bytes(b"")
    assert find_model(str(tmp_path), "bloom")[0].endswith("bloom.pdmodel")


def test_seeded_draws_follow_the_distribution():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    rng = sampler.RowGenerator(11)
    uniforms = [rng.uniform() for _ in range(4000)]
    tokens = [sampler.draw(probs, u) for u in uniforms]
    assert np.abs(np.bincount(tokens, minlength=4) / 4000 - probs).max() < 0.03
    again = sampler.RowGenerator(11)
    assert [again.uniform() for _ in range(4000)] == uniforms
    other = sampler.RowGenerator(12)
    assert np.abs(np.array([other.uniform() for _ in range(4000)]) - uniforms).mean() > 0.1


def test_temperature_top_k_top_p_on_logits():
    logits = np.array([2.0, 1.0, 0.5, -1.0])
    plain = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(sampler.sampling_probs(logits, 1.0, 0, 1.0), plain, rtol=1e-9)
    cold, hot = sampler.sampling_probs(logits, 0.5, 0, 1.0), sampler.sampling_probs(logits, 2.0, 0, 1.0)
    assert cold[0] > plain[0] > hot[0] and cold[3] < plain[3] < hot[3]  # temperature sharpens / flattens
    np.testing.assert_allclose(hot, np.exp(logits / 2) / np.exp(logits / 2).sum(), rtol=1e-9)
    assert (sampler.sampling_probs(logits, 1.0, 2, 1.0) > 0).tolist() == [True, True, False, False]
    assert (sampler.sampling_probs(logits, 1.0, 0, 0.6) > 0).tolist() == [
        True,
        False,
        False,
        False,
    ]  # p = [0.61, 0.22, 0.14, 0.03]
    assert (sampler.sampling_probs(logits, 1.0, 0, 0.7) > 0).tolist() == [True, True, False, False]
    # top-p on a large flat vocabulary (the doubling search) keeps exactly the sorted prefix
    big = np.random.RandomState(0).normal(0, 0.1, 5000)
    probs = np.exp(big) / np.exp(big).sum()
    order = np.argsort(-probs)
    expected = order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9) + 1)]
    assert set(np.nonzero(sampler.sampling_probs(big, 1.0, 0, 0.9))[0]) == set(expected) and len(expected) > 1000
    penalised = sampler.penalise(logits, {0, 3}, 2.0)
    assert penalised.tolist() == [1.0, 1.0, 0.5, -2.0]


def test_mkl_avx2_only_on_amd_and_never_over_the_user(monkeypatch):
    # setenv first, so monkeypatch records the variable's original state and restores it: the
    # function under test writes os.environ itself, and a leaked "5" made MKL on an Intel CPU
    # train non-reproducibly in every later subprocess (test_kill_at_random_step_and_resume...).
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "unset")
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    monkeypatch.setattr(workarounds, "_cpuinfo_field", lambda name: "fpu sse2 avx avx2 fma" if name == "flags" else "")
    monkeypatch.setattr(workarounds, "cpu_vendor", lambda: "GenuineIntel")
    assert not workarounds.prefer_avx2_mkl_on_amd() and "MKL_DEBUG_CPU_TYPE" not in os.environ
    monkeypatch.setattr(workarounds, "cpu_vendor", lambda: "AuthenticAMD")
    assert workarounds.prefer_avx2_mkl_on_amd() and os.environ["MKL_DEBUG_CPU_TYPE"] == "5"
    monkeypatch.setenv("MKL_DEBUG_CPU_TYPE", "4")
    assert not workarounds.prefer_avx2_mkl_on_amd() and os.environ["MKL_DEBUG_CPU_TYPE"] == "4"
    monkeypatch.delenv("MKL_DEBUG_CPU_TYPE")
    monkeypatch.setattr(workarounds, "_cpuinfo_field", lambda name: "fpu sse2 avx" if name == "flags" else "")
    assert not workarounds.prefer_avx2_mkl_on_amd()  # an AMD CPU without AVX2 keeps MKL's own choice
