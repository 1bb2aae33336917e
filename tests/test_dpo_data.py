"""Issue 17: preference data — every supported format gives the fine-tuning tokens, over-long
conversations, and bad records named by file, line and field."""

import numpy as np
import pytest
from dpo_fixtures import BELLE, SCRIPT, dpo_flags, first_word_pairs, write_jsonl

from conftest import run_py
from paddlebloom.data.readers import DataError
from paddlebloom.dpo.data import encode_preference, load_preferences, to_preference
from paddlebloom.tokenizer import BloomTokenizer

Q, C, R, S = "最前面的词是什么？\ncat dog fish", "cat", "fish", "Answer with one word."
ONE_TURN = {
    "trl": {"prompt": Q, "chosen": C, "rejected": R, "system": S},
    "trl conversational": {
        "prompt": [{"role": "system", "content": S}, {"role": "user", "content": Q}],
        "chosen": [{"role": "assistant", "content": C}],
        "rejected": [{"role": "assistant", "content": R}],
    },
    "alpaca": {"instruction": "最前面的词是什么？", "input": "cat dog fish", "chosen": C, "rejected": R, "system": S},
    "sharegpt": {
        "conversations": [{"from": "system", "value": S}, {"from": "human", "value": Q}],
        "chosen": {"from": "gpt", "value": C},
        "rejected": {"from": "gpt", "value": R},
    },
    "messages": {
        "messages": [{"role": "user", "content": Q}],
        "system": S,
        "chosen": {"role": "assistant", "content": C},
        "rejected": {"role": "assistant", "content": R},
    },
    "paddlenlp sorted": {"src": Q, "tgt": [], "response": [R, C], "sort": [0, 1], "system": S},
}
H_Q, H_A = "你好", "你好！"
TWO_TURNS = {
    "trl conversational": {
        "prompt": [
            {"role": "user", "content": H_Q},
            {"role": "assistant", "content": H_A},
            {"role": "user", "content": Q},
        ],
        "chosen": C,
        "rejected": R,
    },
    "alpaca history": {"instruction": Q, "history": [[H_Q, H_A]], "chosen": C, "rejected": R},
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": H_Q},
            {"from": "gpt", "value": H_A},
            {"from": "human", "value": Q},
        ],
        "chosen": C,
        "rejected": R,
    },
    "paddlenlp": {"src": [H_Q, Q], "tgt": [H_A], "response": [C, R]},
}


@pytest.mark.parametrize("records", [ONE_TURN, TWO_TURNS], ids=["one turn", "two turns"])
def test_every_format_gives_the_fine_tuning_tokens_with_only_the_final_answer_scored(tiny_dir, tmp_path, records):
    from paddlebloom.data.dataset import load_examples

    tok = BloomTokenizer.from_pretrained(tiny_dir)
    pairs = {name: encode_preference(to_preference(r, where=name), tok, BELLE, 64, 16) for name, r in records.items()}
    first = next(iter(pairs.values()))
    for name, pair in pairs.items():
        assert all(np.array_equal(a, b) for a, b in zip(pair, first)), name
    c_ids, c_labels, r_ids, r_labels = first
    assert [t for t in c_labels if t != -100] == tok.encode(C) + [tok.eos_token_id]
    assert [t for t in r_labels if t != -100] == tok.encode(R) + [tok.eos_token_id]
    prompt = len(c_ids) - len(tok.encode(C))
    assert np.array_equal(c_ids[:prompt], r_ids[:prompt])  # both answers after the same prompt
    # the chosen side is the fine-tuning example of the same conversation, earlier answers unscored
    history = (
        [{"from": "human", "value": H_Q}, {"from": "gpt", "value": H_A}]
        if records is TWO_TURNS
        else [{"from": "system", "value": S}]
    )
    sft = write_jsonl(
        tmp_path / "sft.jsonl",
        [{"conversations": history + [{"from": "human", "value": Q}, {"from": "gpt", "value": C}]}],
    )
    ((ids, labels),) = load_examples([sft], tok, BELLE, 64, 16, show_progress=False)
    assert np.array_equal(ids, c_ids) and np.array_equal(
        labels[-len(tok.encode(C)) - 1 :], c_labels[-len(tok.encode(C)) - 1 :]
    )
    assert (
        (labels != -100).sum() > (c_labels != -100).sum() if records is TWO_TURNS else np.array_equal(labels, c_labels)
    )


def test_over_long_conversations_keep_the_same_prompt_for_both_answers(tiny_dir):
    from paddlebloom.data.encode import encode_turns

    tok = BloomTokenizer.from_pretrained(tiny_dir)
    history, long_answer = [(f"hi {i}", f"ok {i}") for i in range(6)], "cat " * 20
    # fine-tuning's truncation alone would keep one more old turn before the short answer
    alone = [encode_turns(history + [(Q, a)], tok, BELLE, 96, 16)[0] for a in (long_answer, R)]
    assert tok.decode(list(alone[0])).startswith("Human: \nhi 5") and tok.decode(list(alone[1])).startswith(
        "Human: \nhi 4"
    )
    record = {
        "prompt": [m for q, a in history for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        + [{"role": "user", "content": Q}],
        "chosen": long_answer,
        "rejected": R,
    }
    c_ids, c_labels, r_ids, r_labels = encode_preference(to_preference(record), tok, BELLE, 96, 16)
    c_prompt, r_prompt = len(c_ids) + 1 - (c_labels != -100).sum(), len(r_ids) + 1 - (r_labels != -100).sum()
    assert c_prompt == r_prompt and np.array_equal(c_ids[:c_prompt], r_ids[:r_prompt])
    assert tok.decode(list(r_ids)).startswith("Human: \nhi 5") and tok.decode(list(c_ids[:c_prompt])).endswith(
        BELLE.render(Q, first=False)
    )
    assert len(c_ids) + 1 <= 96 + 16 and [t for t in r_labels if t != -100] == tok.encode(R) + [tok.eos_token_id]


BAD_PAIRS = {
    "missing rejected": ({"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
    "paddlenlp tgt": ({"src": ["a", "b"], "tgt": [], "response": ["x", "y"]}, "field 'tgt'"),
    "paddlenlp sort tie": ({"src": "a", "response": ["x", "y"], "sort": [1, 1]}, "field 'sort'"),
    "paddlenlp one response": ({"src": "a", "response": ["x"]}, "field 'response'"),
    "answered conversation": (
        {
            "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            "chosen": "c",
            "rejected": "d",
        },
        "must end with a user turn",
    ),
    "bad message": (
        {"prompt": [{"role": "robot", "content": "a"}], "chosen": "c", "rejected": "d"},
        "field 'prompt': field 'messages[0]'",
    ),
    "chosen not an answer": (
        {"prompt": "q", "chosen": {"role": "user", "content": "c"}, "rejected": "d"},
        "field 'chosen'",
    ),
    "same answers": ({"prompt": "q", "chosen": "same", "rejected": "same"}, "give the same tokens"),
    "unknown format": ({"question": "q"}, "unknown preference format"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAIRS))
def test_bad_records_are_named_by_file_line_and_field(tiny_dir, tmp_path, case):
    record, message = BAD_PAIRS[case]
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, record])
    with pytest.raises(DataError) as e:
        load_preferences([path], BloomTokenizer.from_pretrained(tiny_dir), BELLE, 48, 16, show_progress=False)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value), str(e.value)


def test_bad_data_stops_the_script_in_one_line_and_writes_nothing(tiny_dir, tmp_path):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", first_word_pairs(3, 0) + [{"src": "q", "response": ["x", "y"], "sort": [2, 2]}]
    )
    proc = run_py([SCRIPT, *dpo_flags(tiny_dir, bad, tmp_path / "out", "--max_steps", "1")], check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
    assert proc.returncode == 2 and lines[-1].startswith(f"dpo.py: error: {bad}:4: field 'sort'"), proc.stderr[-800:]
    assert not (tmp_path / "out").exists()
