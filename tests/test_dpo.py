"""Issue 17: preference tuning (DPO / IPO) on the fine-tuning trainer — TRL's loss and gradients,
the LoRA reference, TP=2 ≡ TP=1, data parallel, resume and bad flags (data formats and bad data:
test_dpo_data.py)."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import paddle
import pytest
from dpo_fixtures import BELLE, SCRIPT, dpo_flags, first_word_pairs, write_jsonl

from conftest import HF_PY, ROOT, launch, require_hf_venv, run_py
from paddlebloom.checkpoint import load_into
from paddlebloom.config import BloomConfig
from paddlebloom.dpo.cli import parse_dpo_args, run_dpo
from paddlebloom.dpo.data import collate_pairs, encode_preference, to_preference
from paddlebloom.dpo.objective import PreferenceObjective
from paddlebloom.dpo.reference import AdaptersOff, FrozenCopy
from paddlebloom.model import BloomForCausalLM
from paddlebloom.tokenizer import BloomTokenizer
from paddlebloom.weights import WEIGHTS, read_state_for_rank, save_weights


@pytest.fixture(scope="module")
def policy_dir(tiny_dir, tmp_path_factory):
    """tiny_dir with every weight moved: a policy that differs from its reference (tiny_dir)."""
    out = str(tmp_path_factory.mktemp("dpo") / "policy")
    shutil.copytree(tiny_dir, out)
    rng = np.random.RandomState(0)
    state = {k: (v + rng.normal(0, 0.02, v.shape)).astype(np.float32) for k, v in read_state_for_rank(tiny_dir).items()}
    save_weights(state, os.path.join(out, WEIGHTS))
    return out


def load(directory):
    model = BloomForCausalLM(BloomConfig.load(directory))
    load_into(model, directory)
    model.eval()  # as TRL: no dropout (the tiny model has none anyway)
    return model


TRL_SETTINGS = [
    {"beta": 0.1, "loss_type": "sigmoid", "label_smoothing": 0.1},
    {"beta": 0.5, "loss_type": "ipo", "label_smoothing": 0.0},
]


@pytest.fixture(scope="module")
def trl_results(tiny_dir, policy_dir, tmp_path_factory):
    """TRL's DPOTrainer (.venv-hf, float64) on the same weights and pairs, once for every setting."""
    require_hf_venv()
    from paddlebloom.convert_hf import to_hf

    base = tmp_path_factory.mktemp("trl")
    to_hf(policy_dir, str(base / "policy"))
    to_hf(tiny_dir, str(base / "reference"))
    pairs = first_word_pairs(6, seed=5)
    with open(base / "pairs.json", "w", encoding="utf-8") as f:  # TRL gets text and tokenises it itself
        json.dump([{**p, "prompt": BELLE.render(p["prompt"])} for p in pairs], f, ensure_ascii=False)
    subprocess.run(
        [
            HF_PY,
            os.path.join(ROOT, "tests", "workers", "trl_dpo.py"),
            str(base / "policy"),
            str(base / "reference"),
            str(base / "pairs.json"),
            json.dumps(TRL_SETTINGS),
            str(base / "out"),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return pairs, [np.load(base / f"out.{n}.npz") for n in range(len(TRL_SETTINGS))]


@pytest.mark.parametrize("setting", range(len(TRL_SETTINGS)), ids=[s["loss_type"] for s in TRL_SETTINGS])
def test_loss_metrics_and_gradients_equal_trl(trl_results, tiny_dir, policy_dir, setting):
    pairs, results = trl_results
    trl, s = results[setting], TRL_SETTINGS[setting]
    tok = BloomTokenizer.from_pretrained(tiny_dir)
    encoded = [encode_preference(to_preference(p), tok, BELLE, 64, 16) for p in pairs]
    # the same tokens: prompt (left-padded by TRL) + answer + EOS (right-padded)
    for row, (c_ids, c_labels, r_ids, r_labels) in enumerate(encoded):
        prompt = [t for t in trl["tokens:prompt_input_ids"][row] if t != tok.pad_token_id]
        for ids, labels, key in ((c_ids, c_labels, "chosen"), (r_ids, r_labels, "rejected")):
            answer = [t for t in trl[f"tokens:{key}_input_ids"][row] if t != tok.pad_token_id]
            assert list(ids) + [labels[-1]] == prompt + answer and list(labels[labels != -100]) == answer

    policy = load(policy_dir)
    objective = PreferenceObjective(s["beta"], s["loss_type"], s["label_smoothing"])
    objective.reference = FrozenCopy(BloomConfig.load(tiny_dir), tiny_dir)
    loss = objective.loss(policy, collate_pairs(encoded, tok.pad_token_id), None)
    loss.backward()
    metrics, want = objective.step_metrics(), json.loads(str(trl["metrics"]))
    assert abs(float(loss) - float(trl["loss"])) < 1e-5, (float(loss), float(trl["loss"]))
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert abs(metrics[name] - want[name]) < 1e-5, (name, metrics[name], want[name])
    for name in ("logps/chosen", "logps/rejected"):  # sums over an answer: float32 keeps ~7 digits of -20
        assert abs(metrics[name] - want[name]) < 1e-4 * max(1.0, abs(want[name])), (name, metrics[name], want[name])
    grads = {n: p.grad.numpy() for n, p in policy.named_parameters()}
    assert sorted(grads) == sorted(k[len("grad:") :] for k in trl.files if k.startswith("grad:"))
    worst = max(np.abs(grads[n] - trl["grad:" + n]).max() for n in grads)
    largest = max(np.abs(trl["grad:" + n]).max() for n in grads)
    print(
        f"{s['loss_type']}: loss {float(loss):.8f} vs TRL {float(trl['loss']):.8f}; "
        f"gradients differ by at most {worst:.2e} (largest {largest:.2e})"
    )
    assert worst < 1e-5 and largest > 1e-2, (worst, largest)
    assert (
        max(abs(want["rewards/chosen"]), abs(want["rewards/rejected"])) > 1e-2
    )  # the policy really differs from its reference


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_dir):
    from paddlebloom.lora.config import LoRAConfig
    from paddlebloom.lora.model import LoRA

    tok = BloomTokenizer.from_pretrained(tiny_dir)
    batch = [
        paddle.to_tensor(a)
        for a in collate_pairs(
            [encode_preference(to_preference(p), tok, BELLE, 64, 16) for p in first_word_pairs(4, 1)], 3
        )
    ]
    base = FrozenCopy(BloomConfig.load(tiny_dir), tiny_dir)
    lora = LoRA(
        LoRAConfig(
            r=4, lora_dropout=0.0, target_modules=LoRAConfig.parse_targets("qkv,dense,dense_h_to_4h,dense_4h_to_h")
        )
    )
    policy = lora.apply(load(tiny_dir))
    for name, p in lora.trainable_state(policy).items():  # a trained-looking adapter (B starts at 0)
        if name.endswith("lora_B"):
            p.set_value(paddle.normal(0, 0.05, p.shape))
    policy.train()
    from paddlebloom.dpo.loss import sequence_logps

    with_adapter = sequence_logps(policy, *batch).numpy()
    reference = AdaptersOff(policy).logps(*batch).numpy()
    np.testing.assert_allclose(reference, base.logps(*batch).numpy(), atol=1e-5)
    assert np.abs(with_adapter - reference).max() > 1e-2  # the adapter matters...
    assert policy.training and np.array_equal(sequence_logps(policy, *batch).numpy(), with_adapter)  # ...and is back on
    assert not any(isinstance(v, paddle.Tensor) for v in vars(AdaptersOff(policy)).values())  # no second copy


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", first_word_pairs(64, seed=11))


DPO_MODES = {
    "full": ["--beta", "0.2", "--label_smoothing", "0.1"],
    # dropout 0: dropout masks on row-parallel shards cannot reproduce single-process masks
    "lora": [
        "--lora",
        "--lora_dropout",
        "0",
        "--lora_target_modules",
        "qkv,dense,dense_h_to_4h,dense_4h_to_h",
        "--loss_type",
        "ipo",
        "--learning_rate",
        "1e-2",
    ],
}
STEP_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("mode", sorted(DPO_MODES))
def test_tp2_follows_tp1(tiny_dir, pairs_file, tmp_path, mode):
    extra = ["--max_steps", "6", *DPO_MODES[mode]]
    one = run_dpo(parse_dpo_args(dpo_flags(tiny_dir, pairs_file, tmp_path / "tp1", *extra)))["train_history"]
    launch(
        [SCRIPT, *dpo_flags(tiny_dir, pairs_file, tmp_path / "tp2", *extra), "--tensor_parallel_degree", "2"],
        tmp_path / "log",
    )
    saved = json.load(open(tmp_path / "tp2" / "metrics.json"))
    two = saved["train_history"]
    assert saved["tensor_parallel_degree"] == 2 and saved["kind"] == mode and len(one) == len(two) == 6
    for name in STEP_METRICS:
        worst = max(abs(a[name] - b[name]) for a, b in zip(one, two))
        assert worst < 1e-5 * max(1.0, max(abs(a[name]) for a in one)), (name, worst)
    assert abs(one[-1]["rewards/margins"]) > 1e-3 and one[-1]["loss"] != one[0]["loss"]  # it trains
    assert os.path.getsize(tmp_path / "tp2" / "dpo_rewards.png") > 1000


def test_two_data_parallel_ranks_equal_one_big_batch(tiny_dir, pairs_file, tmp_path):
    """Pairs weigh the same on every rank: DP=2 x 2 pairs is one step over the 4 pairs."""
    one = run_dpo(parse_dpo_args(dpo_flags(tiny_dir, pairs_file, tmp_path / "dp1", "--max_steps", "3")))[
        "train_history"
    ]
    launch(
        [
            SCRIPT,
            *dpo_flags(
                tiny_dir, pairs_file, tmp_path / "dp2", "--max_steps", "3", "--per_device_train_batch_size", "2"
            ),
        ],
        tmp_path / "log",
    )
    saved = json.load(open(tmp_path / "dp2" / "metrics.json"))
    assert saved["data_parallel_degree"] == 2
    for name in STEP_METRICS:
        assert max(abs(a[name] - b[name]) for a, b in zip(one, saved["train_history"])) < 1e-5 * max(
            1.0, max(abs(a[name]) for a in one)
        ), name


def test_resume_continues_exactly(tiny_dir, pairs_file, tmp_path):
    straight = run_dpo(parse_dpo_args(dpo_flags(tiny_dir, pairs_file, tmp_path / "straight", "--max_steps", "4")))
    # fresh processes, as a restarted job (Paddle names optimizer state after creation order)
    run_py([SCRIPT, *dpo_flags(tiny_dir, pairs_file, tmp_path / "resumed", "--max_steps", "2", "--save_steps", "2")])
    proc = run_py(
        [SCRIPT, *dpo_flags(tiny_dir, pairs_file, tmp_path / "resumed", "--max_steps", "4", "--save_steps", "2")]
    )
    assert "resumed from" in proc.stdout
    resumed = json.load(open(tmp_path / "resumed" / "metrics.json"))
    assert resumed["train_history"] == straight["train_history"]  # the reference is the starting model again
    a, b = read_state_for_rank(str(tmp_path / "straight")), read_state_for_rank(str(tmp_path / "resumed"))
    assert all(np.array_equal(a[k], b[k]) for k in a)


BAD_FLAGS = {
    "prefix": (["--prefix"], "--prefix is not supported by DPO"),
    "cDPO rate": (["--label_smoothing", "0.5"], "--label_smoothing (conservative DPO) must be in [0, 0.5)"),
    "smoothing with ipo": (["--loss_type", "ipo", "--label_smoothing", "0.1"], "applies to --loss_type sigmoid only"),
    "beta": (["--beta", "0"], "--beta must be positive"),
    "generation": (["--do_generation", "--validation_file", "dev.jsonl"], "--do_generation scores fine-tuning answers"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_are_refused(tiny_dir, pairs_file, tmp_path, case):
    extra, message = BAD_FLAGS[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_dpo_args(dpo_flags(tiny_dir, pairs_file, tmp_path / "out", *extra))
