"""Issue 4: prediction, merging, chat and Hugging Face import."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import paddle
import pytest

from conftest import HF_PY, ROOT, launch, require_hf_venv, run_py
from paddlebloom.generation import GenerationConfig, generate_ids, left_pad
from paddlebloom.loading import load_model

PREDICT = os.path.join(ROOT, "predict", "predict_generation.py")
FINETUNE = os.path.join(ROOT, "finetune", "finetune_generation.py")
PROMPTS = ["Alice has a red", "在北京，小明每天早上", "3 plus 4", "The cat is"]


def test_padded_batch_equals_each_prompt_alone(trained_tiny):
    model, tok, _ = load_model(trained_tiny)
    prompts = [tok.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 1  # really padded
    config = GenerationConfig(max_new_tokens=6)
    batch = generate_ids(model, prompts, config)
    assert batch == [generate_ids(model, [p], config)[0] for p in prompts]
    # and the mask matters: without it the padded rows see pad tokens and their logits change
    ids, mask = (paddle.to_tensor(a) for a in left_pad(prompts, tok.pad_token_id))
    with_mask, without = model(ids, attention_mask=mask).logits.numpy(), model(ids).logits.numpy()
    assert np.abs(with_mask[:, -1] - without[:, -1]).max() > 1e-3


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_tp2_prediction_equals_tp1_and_bad_lines_are_reported(trained_tiny, tmp_path):
    records = [{"instruction": p, "output": "reference"} for p in PROMPTS] + [{"text": "Bob went to"}]
    data = tmp_path / "in.jsonl"
    write_jsonl(data, records)
    with open(data, "a", encoding="utf-8") as f:
        f.write("{not json\n" + json.dumps({"instruction": "last one", "output": ""}) + "\n")
    common = [
        "--model_name_or_path",
        trained_tiny,
        "--data_file",
        str(data),
        "--max_new_tokens",
        "6",
        "--batch_size",
        "3",
    ]
    one = run_py([PREDICT, *common, "--output_file", str(tmp_path / "tp1.jsonl")], check=False)
    assert one.returncode == 2 and f"{data}:6: invalid JSON" in one.stderr
    assert "tokens/s" in one.stdout
    two = launch([PREDICT, *common, "--output_file", str(tmp_path / "tp2.jsonl")], tmp_path / "log", check=False)
    assert two.returncode != 0  # the bad line makes every rank end non-zero
    a = [json.loads(line) for line in open(tmp_path / "tp1.jsonl", encoding="utf-8")]
    b = [json.loads(line) for line in open(tmp_path / "tp2.jsonl", encoding="utf-8")]
    assert len(a) == 6 and a == b  # every good record, in order, same greedy tokens at TP=2
    assert a[0]["output"] == "reference" and all(r["prediction"] for r in a[:5])


def test_tp2_sampling_agrees_across_ranks_and_with_one_process(trained_tiny, tmp_path):
    launch(
        [os.path.join(ROOT, "tests", "workers", "tp_sampling.py"), trained_tiny, str(tmp_path / "out.json")],
        tmp_path / "log",
    )
    result = json.load(open(tmp_path / "out.json"))
    assert result["ranks_agree"]  # unseeded: one seed for all ranks, else the shards see different tokens
    model, tok, _ = load_model(trained_tiny)
    config = GenerationConfig(max_new_tokens=8, decode_strategy="sampling", top_k=50, temperature=1.5, seed=11)
    assert result["seeded"] == generate_ids(model, [tok.encode("Alice has a red"), tok.encode("The cat is")], config)


def test_merge_tp2_shards_and_lora_into_one_checkpoint(trained_tiny, tmp_path):
    from paddlenlp.transformers import BloomForCausalLM as PaddleNLPBloom

    from paddlebloom.training.arguments import parse_args
    from paddlebloom.training.trainer import run

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": p, "output": "ok"} for p in PROMPTS] * 4)
    shards = tmp_path / "shards"
    common = [
        "--train_file",
        data,
        "--src_length",
        "32",
        "--tgt_length",
        "16",
        "--save_steps",
        "0",
        "--disable_tqdm",
        "--learning_rate",
        "1e-2",
    ]
    launch(
        [
            FINETUNE,
            "--model_name_or_path",
            trained_tiny,
            "--output_dir",
            str(shards),
            "--max_steps",
            "2",
            "--save_shards",
            "--tensor_parallel_degree",
            "2",
            *common,
        ],
        tmp_path / "log1",
    )
    assert os.path.isfile(shards / "model_state.tp01.pdparams")
    lora = tmp_path / "lora"
    run(
        parse_args(
            [
                "--model_name_or_path",
                str(shards),
                "--output_dir",
                str(lora),
                "--max_steps",
                "3",
                "--lora",
                "--lora_target_modules",
                "qkv,dense,dense_h_to_4h,dense_4h_to_h",
                *common,
            ]
        )
    )
    merged = tmp_path / "merged"
    launch(
        [
            PREDICT,
            "--model_name_or_path",
            str(shards),
            "--lora_path",
            str(lora),
            "--save_onepiece_model_path",
            str(merged),
        ],
        tmp_path / "log2",
    )
    assert sorted(f for f in os.listdir(merged) if f.endswith(".pdparams")) == ["model_state.pdparams"]
    ids = paddle.to_tensor([[5, 6, 7, 8, 9, 10, 11]])
    unmerged, _, _ = load_model(str(shards), lora_path=str(lora), merge_lora=False)
    base, _, _ = load_model(str(shards))
    want = unmerged(ids).logits.numpy()
    assert np.abs(want - base(ids).logits.numpy()).max() > 1e-3  # the adapter is not zero
    got, _, _ = load_model(str(merged))
    np.testing.assert_allclose(got(ids).logits.numpy(), want, atol=1e-5)
    plain = PaddleNLPBloom.from_pretrained(str(merged), dtype="float32")
    plain.eval()
    np.testing.assert_allclose(plain(ids, return_dict=True).logits.numpy(), want, atol=1e-5)


def test_prefix_is_saved_alongside_the_merged_checkpoint(trained_tiny, tmp_path):
    from paddlebloom.training.arguments import parse_args
    from paddlebloom.training.trainer import run

    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": p, "output": "ok"} for p in PROMPTS])
    prefix = tmp_path / "prefix"
    run(
        parse_args(
            [
                "--model_name_or_path",
                trained_tiny,
                "--train_file",
                data,
                "--output_dir",
                str(prefix),
                "--max_steps",
                "2",
                "--prefix",
                "--num_prefix_tokens",
                "3",
                "--save_steps",
                "0",
                "--disable_tqdm",
            ]
        )
    )
    merged = tmp_path / "merged"
    run_py(
        [
            PREDICT,
            "--model_name_or_path",
            trained_tiny,
            "--prefix_path",
            str(prefix),
            "--save_onepiece_model_path",
            str(merged),
        ]
    )
    assert {"prefix_config.json", "prefix_model_state.pdparams", "model_state.pdparams"} <= set(os.listdir(merged))
    ids = paddle.to_tensor([[5, 6, 7, 8]])
    a, _, _ = load_model(trained_tiny, prefix_path=str(prefix))
    b, _, _ = load_model(str(merged), prefix_path=str(merged))
    np.testing.assert_allclose(a(ids).logits.numpy(), b(ids).logits.numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def hf_model(tiny_dir, tmp_path_factory):
    require_hf_venv()
    base = tmp_path_factory.mktemp("hf")
    subprocess.run(
        [
            HF_PY,
            os.path.join(ROOT, "tests", "workers", "hf_bloom.py"),
            str(base / "hf"),
            tiny_dir,
            str(base / "ref.npz"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return base


def test_hugging_face_import_gives_hf_logits(hf_model, tmp_path):
    assert os.path.isfile(hf_model / "hf" / "model.safetensors.index.json")  # a sharded checkpoint
    out = tmp_path / "converted"
    run_py(["-m", "paddlebloom.convert_hf", "--hf_dir", str(hf_model / "hf"), "--output_dir", str(out)])
    ref = np.load(hf_model / "ref.npz")
    model, tok, _ = load_model(str(out))
    got = model(paddle.to_tensor(ref["ids"]), attention_mask=paddle.to_tensor(ref["mask"])).logits.numpy()
    real = ref["mask"].astype(bool)  # HF leaves padded positions' logits arbitrary
    np.testing.assert_allclose(got[real], ref["logits"][real], atol=1e-4)
    assert np.abs(ref["logits"]).max() > 0.5 and tok.eos_token_id == 2


def test_safetensors_reader_widens_bfloat16(tmp_path):
    from paddlebloom.weights import read_safetensors

    values = np.array([[1.0, -2.5], [0.15625, 384.0]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact for these values
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bf16.tobytes())
    np.testing.assert_array_equal(read_safetensors(str(path))["w"], values)
    bad = run_py(
        ["-m", "paddlebloom.convert_hf", "--hf_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")], check=False
    )
    assert bad.returncode == 2 and "no config.json" in bad.stderr and not (tmp_path / "o").exists()


def test_chat_in_a_pseudo_terminal_remembers_the_first_turn(trained_tiny):
    import pexpect  # noqa: F401  (installed with the dev requirements)

    from paddlebloom.chat import build_prompt
    from paddlebloom.data.templates import TEMPLATES

    child = pexpect.spawn(
        sys.executable,
        [os.path.join(ROOT, "predict", "chat.py"), "--model_name_or_path", trained_tiny, "--max_new_tokens", "6"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        encoding="utf-8",
        timeout=120,
    )
    answers = []
    for question in ("Alice has a red", "The cat is"):
        child.expect("Human: ")
        child.sendline(question)
        child.expect("Assistant: ")
        child.expect("\r\n")
        answers.append(child.before.strip())
    child.expect("Human: ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    model, tok, _ = load_model(trained_tiny)
    config = GenerationConfig(max_new_tokens=6)
    first = tok.decode(
        generate_ids(model, [build_prompt(tok, TEMPLATES["belle"], [], "Alice has a red", 1024)], config)[0]
    )
    second = build_prompt(tok, TEMPLATES["belle"], [("Alice has a red", first)], "The cat is", 1024)
    assert "Alice has a red" in tok.decode(second)  # the second prompt carries the first turn
    from paddlebloom.data.encode import encode_turns

    trained_on, _ = encode_turns(
        [("Alice has a red", first), ("The cat is", "next")], tok, TEMPLATES["belle"], 1024, 64
    )
    assert trained_on[: len(second)].tolist() == second  # the history is tokenised as in fine-tuning
    assert answers == [first.strip(), tok.decode(generate_ids(model, [second], config)[0]).strip()]
    short = build_prompt(
        tok,
        TEMPLATES["belle"],
        [("Alice has a red", first)],
        "The cat is",
        len(tok.encode(TEMPLATES["belle"].render("The cat is"))) + 1,
    )
    assert "Alice" not in tok.decode(short)  # the oldest turn goes first when the context is full
