"""Issue 3, data: every format gives the expected shifted, prompt-masked token arrays."""

import json

import numpy as np
import pytest

from paddlebloom.chat import build_prompt
from paddlebloom.data.dataset import BatchPlan, collate, load_examples
from paddlebloom.data.encode import IGNORE, encode_turns
from paddlebloom.data.formats import prompt_for_prediction, to_dialogue
from paddlebloom.data.readers import DataError, iter_records
from paddlebloom.data.templates import TEMPLATES
from paddlebloom.tokenizer import BloomTokenizer

BELLE = TEMPLATES["belle"]


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return BloomTokenizer.from_pretrained(tiny_dir)


def belle_prompt(q, system=None, first=True):
    """BELLE's prompt text written out by hand (not through Template): a system prompt and a
    blank line open the conversation."""
    return (system + "\n\n" if system and first else "") + "Human: \n" + q + "\n\nAssistant: \n"


def expected(tok, pairs, system=None):
    """Independent construction: concatenate, shift by one, mask prompt positions."""
    ids, scored = [], []
    for i, (q, a) in enumerate(pairs):
        p = tok.encode(belle_prompt(q, system, i == 0)) if q is not None else []
        r = tok.encode(a) + [tok.eos_token_id]
        ids += p + r
        scored += [0] * len(p) + [1] * len(r)
    ids = np.array(ids)
    return ids[:-1], np.where(np.array(scored[1:]) == 1, ids[1:], IGNORE)


def write(path, records, array=False):
    with open(path, "w", encoding="utf-8") as f:
        if array:
            json.dump(records, f, ensure_ascii=False, indent=1)
        else:
            f.write("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return str(path)


CASES = {
    "alpaca": (
        {"instruction": "Translate into Chinese.", "input": "cat", "output": "猫"},
        [("Translate into Chinese.\ncat", "猫")],
    ),
    "alpaca_empty_input": (
        {"instruction": "What is 3 plus 4?", "input": "", "output": "7"},
        [("What is 3 plus 4?", "7")],
    ),
    "belle": ({"instruction": "三加四等于多少？", "output": "七"}, [("三加四等于多少？", "七")]),
    "src_tgt": ({"src": "Alice has a", "tgt": "red cat"}, [("Alice has a", "red cat")]),
    "src_tgt_multi": ({"src": ["hi", "and then?"], "tgt": ["hello", "bye"]}, [("hi", "hello"), ("and then?", "bye")]),
    "conversation": (
        {
            "id": "1",
            "conversations": [
                {"from": "human", "value": "你好"},
                {"from": "assistant", "value": "你好！"},
                {"from": "human", "value": "Who are you?"},
                {"from": "assistant", "value": "A tiny BLOOM."},
            ],
        },
        [("你好", "你好！"), ("Who are you?", "A tiny BLOOM.")],
    ),
    "text": ({"text": "Bob went to Paris with a dog."}, [(None, "Bob went to Paris with a dog.")]),
}
SYSTEM = "You are a terse assistant."
# The formats users bring from LLaMA-Factory and OpenAI, each with a system prompt: (record, pairs, system).
SYSTEM_CASES = {
    "sharegpt": (
        {
            "conversations": [
                {"from": "human", "value": "你好"},
                {"from": "gpt", "value": "你好！"},
                {"from": "human", "value": "Who are you?"},
                {"from": "gpt", "value": "A tiny BLOOM."},
            ],
            "system": SYSTEM,
        },
        [("你好", "你好！"), ("Who are you?", "A tiny BLOOM.")],
        SYSTEM,
    ),
    "sharegpt_system_turn": (
        {
            "conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "user", "value": "hi"},
                {"from": "assistant", "value": "hello"},
            ]
        },
        [("hi", "hello")],
        SYSTEM,
    ),
    "openai_messages": (
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": "3 plus 4?"},
                {"role": "assistant", "content": "7"},
                {"role": "user", "content": [{"type": "text", "text": "and 5 plus 5?"}]},
                {"role": "assistant", "content": "10"},
            ]
        },
        [("3 plus 4?", "7"), ("and 5 plus 5?", "10")],
        SYSTEM,
    ),
    "alpaca_history_system": (
        {
            "instruction": "Translate into Chinese.",
            "input": "dog",
            "output": "狗",
            "system": SYSTEM,
            "history": [["Translate into Chinese.\ncat", "猫"], ["And bird?", "鸟"]],
        },
        [("Translate into Chinese.\ncat", "猫"), ("And bird?", "鸟"), ("Translate into Chinese.\ndog", "狗")],
        SYSTEM,
    ),
    "belle_history": (
        {"instruction": "三加四等于多少？", "output": "七", "history": [["一加一？", "二"]]},
        [("一加一？", "二"), ("三加四等于多少？", "七")],
        None,
    ),
}
ALL_CASES = {**{k: (r, p, None) for k, (r, p) in CASES.items()}, **SYSTEM_CASES}


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_each_format_gives_shifted_masked_arrays(tok, tmp_path, name):
    record, pairs, system = ALL_CASES[name]
    path = write(tmp_path / f"{name}.jsonl", [record])
    ((ids, labels),) = load_examples([path], tok, BELLE, 256, 256, show_progress=False)
    want_ids, want_labels = expected(tok, pairs, system)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(labels, want_labels)
    n_answers = sum(len(tok.encode(a)) + 1 for _, a in pairs)
    assert (labels != IGNORE).sum() == (n_answers if pairs[0][0] is not None else len(ids))


def test_multi_turn_scores_every_assistant_turn_only(tok):
    _, pairs = CASES["conversation"]
    ids, labels = encode_turns(pairs, tok, BELLE, 256, 256)
    scored_text = tok.decode([t for t in labels if t != IGNORE], skip_special_tokens=False)
    assert scored_text == "你好！</s>A tiny BLOOM.</s>"


def test_json_array_and_txt_and_template_choice(tok, tmp_path):
    array = write(tmp_path / "a.json", [CASES["alpaca"][0], CASES["belle"][0]], array=True)
    assert [n for n, _ in iter_records(array)] == [2, 7]  # real line numbers inside the array
    txt = tmp_path / "t.txt"
    txt.write_text("line one\n\nline two\n", encoding="utf-8")
    assert [r["text"] for _, r in iter_records(str(txt))] == ["line one", "line two"]
    ((ids, _),) = load_examples(
        [write(tmp_path / "b.jsonl", [CASES["belle"][0]])], tok, TEMPLATES["alpaca"], 256, 256, show_progress=False
    )
    assert tok.decode(ids).startswith("Below is an instruction")


def test_truncation_rules(tok):
    q, a = "one two three four five six seven eight nine ten", "alpha beta gamma delta epsilon"
    p_ids, a_ids = tok.encode(BELLE.render(q)), tok.encode(a) + [2]
    ids, labels = encode_turns([(q, a)], tok, BELLE, src_length=6, tgt_length=100)
    assert list(ids[:6]) == p_ids[-6:]  # source keeps its end
    assert ids[-1] == a_ids[-2] and labels[-1] == 2  # EOS kept when the target fits
    ids, labels = encode_turns([(q, a)], tok, BELLE, src_length=100, tgt_length=3)
    assert list(labels[-3:]) == a_ids[:3] and 2 not in labels  # target cut from the right, EOS gone
    turns = [("first question here", "first answer"), ("second", "two"), ("third", "three")]
    short = sum(len(tok.encode(BELLE.render(x))) + len(tok.encode(y)) + 1 for x, y in turns[1:])
    ids, _ = encode_turns(turns, tok, BELLE, src_length=short // 2, tgt_length=short - short // 2)
    assert "first" not in tok.decode(ids) and "second" in tok.decode(ids)  # earliest turn dropped


def test_prompt_for_prediction_uses_history(tok):
    _, pairs = CASES["conversation"]
    prompt = prompt_for_prediction(CASES["conversation"][0])
    assert prompt == BELLE.render("你好") + "你好！</s>" + BELLE.render("Who are you?")
    open_conv = {"conversations": [{"from": "human", "value": "hi"}]}
    assert prompt_for_prediction(open_conv) == BELLE.render("hi")
    assert prompt_for_prediction({"question": "q?", "std_answer": "a", "class": "c"}) == BELLE.render("q?")
    # predicting needs no answer field
    assert prompt_for_prediction({"instruction": "Translate.", "input": "cat"}) == BELLE.render("Translate.\ncat")
    assert prompt_for_prediction({"src": "Alice has a"}) == BELLE.render("Alice has a")
    assert prompt_for_prediction({"src": ["hi", "and?"], "tgt": ["hello"]}) == BELLE.render(
        "hi"
    ) + "hello</s>" + BELLE.render("and?")


@pytest.mark.parametrize(
    "record, field",
    [
        ({"instruction": "x"}, "'output'"),
        ({"instruction": 3, "output": "y"}, "'instruction'"),
        ({"conversations": [{"from": "assistant", "value": "x"}]}, "conversations[0]"),
        ({"conversations": [{"from": "gpt", "value": "x"}]}, "'conversations[0]': gpt turn without a user turn"),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "{}"}]},
            "'conversations[1]' needs 'from' one of human|user|gpt|assistant|system",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "system", "content": "c"},
                ]
            },
            "'messages[2]': a system message must come before",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            "'messages[0].content' must be a string or a list of text parts",
        ),
        ({"messages": [{"speaker": "user", "text": "a"}]}, "'messages[0]' needs 'role'"),
        ({"instruction": "a", "output": "b", "history": [["q"]]}, "'history[0]' must be a [query, answer] pair"),
        ({"instruction": "a", "output": "b", "system": 3}, "'system' must be a string"),
        ({"src": ["a"], "tgt": "b"}, "'src'/'tgt'"),
        ({"foo": "bar"}, "unknown format"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, field):
    path = write(tmp_path / "bad.jsonl", [CASES["belle"][0], record])
    with pytest.raises(DataError) as err:
        for n, r in iter_records(path):
            to_dialogue(r, where=f"{path}:{n}")
    assert str(err.value).startswith(f"{path}:2:") and field in str(err.value)


def test_collate_and_batch_plan_are_deterministic():
    ex = [(np.arange(3), np.arange(3)), (np.arange(5), np.arange(5))]
    ids, mask, labels = collate(ex, pad_token_id=3)
    assert ids.tolist()[0] == [0, 1, 2, 3, 3] and mask.sum() == 8 and labels[0, 3] == IGNORE
    plan = BatchPlan(n_examples=10, micro_batch=2, accumulation=2, dp_degree=1, seed=5)
    assert plan.micro_batches(7) == BatchPlan(10, 2, 2, 1, 0, 5).micro_batches(7)
    seen = sorted(i for s in range(plan.steps_per_epoch - 1) for mb in plan.micro_batches(s) for i in mb)
    assert len(set(seen)) == len(seen) == 8  # an epoch visits examples without repeats
    split = [BatchPlan(10, 2, 1, 2, r, 5).micro_batches(0)[0] for r in range(2)]
    assert sorted(split[0] + split[1]) == sorted(BatchPlan(10, 4, 1, 1, 0, 5).micro_batches(0)[0])


def test_templates_write_the_system_prompt_as_documented():
    q = "2+2?"
    assert TEMPLATES["belle"].render(q) == "Human: \n2+2?\n\nAssistant: \n"
    assert TEMPLATES["belle"].render(q, SYSTEM) == SYSTEM + "\n\nHuman: \n2+2?\n\nAssistant: \n"
    preamble = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    )
    assert (
        TEMPLATES["alpaca"].render(q) == preamble + "### Instruction:\n2+2?\n\n### Response:\n"
    )  # unchanged without a system prompt
    assert (
        TEMPLATES["alpaca"].render(q, SYSTEM) == SYSTEM + "\n\n### Instruction:\n2+2?\n\n### Response:\n"
    )  # the system prompt replaces the preamble
    assert TEMPLATES["plain"].render(q, SYSTEM) == SYSTEM + "\n\n2+2?" and TEMPLATES["plain"].render(q) == q
    assert all(
        t.render(q, SYSTEM, first=False) == t.render(q, None, first=False) == t.prompt.format(q=q)
        for t in TEMPLATES.values()
    )


@pytest.mark.parametrize("name", sorted(SYSTEM_CASES))
def test_prediction_and_chat_prompts_carry_history_and_system(tok, tmp_path, name):
    record, pairs, system = SYSTEM_CASES[name]
    *history, (query, answer) = pairs
    # prediction: the last answer is the reference; the prompt is every earlier turn, then the query
    want = "".join(belle_prompt(q, system, i == 0) + a + "</s>" for i, (q, a) in enumerate(history)) + belle_prompt(
        query, system, not history
    )
    assert prompt_for_prediction(record) == want
    key = "conversations" if "conversations" in record else "messages" if "messages" in record else None
    if key:  # a conversation that ends with the user asks for the next answer: same prompt
        assert prompt_for_prediction({**record, key: record[key][:-1]}) == want
    else:
        assert prompt_for_prediction({k: v for k, v in record.items() if k != "output"}) == want
    # chat: the same token ids as the training example up to the last answer
    ((ids, _),) = load_examples([write(tmp_path / "r.jsonl", [record])], tok, BELLE, 256, 256, show_progress=False)
    prompt = build_prompt(tok, BELLE, history, query, 256, system)
    assert prompt == ids[: len(prompt)].tolist() and tok.decode(ids[len(prompt) :]).startswith(answer)
    assert tok.encode(want) == prompt  # and prediction feeds the model those same ids
    if system and history:  # a full context drops the oldest turns, never the system prompt
        short = build_prompt(tok, BELLE, history, query, len(tok.encode(belle_prompt(query, system))) + 1, system)
        assert short == tok.encode(belle_prompt(query, system))


@pytest.mark.parametrize(
    "suffix, content",
    [
        (".jsonl", b'{"text": "fine"}\n{"text": "caf\xe9"}\n'),
        (".json", b'[\n {"text": "fine"},\n {"text": "caf\xe9"}\n]\n'),
        (".txt", b"fine\ncaf\xe9\n"),
    ],
)
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, suffix, content):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(iter_records(str(path)))
    line = 3 if suffix == ".json" else 2
    assert str(err.value).startswith(f"{path}:{line}: not UTF-8 text (byte 0xe9)")


def test_convert_keeps_the_system_prompt():
    from paddlebloom.tools.convert import convert_record

    record = SYSTEM_CASES["openai_messages"][0]
    conv = convert_record(record, "conversations", "r")
    assert conv["system"] == SYSTEM and to_dialogue(conv) == to_dialogue(
        record
    )  # LLaMA-Factory's sharegpt `system` field
    st = convert_record(record, "src_tgt", "r", TEMPLATES["belle"])
    assert st["src"] == [belle_prompt("3 plus 4?", SYSTEM), belle_prompt("and 5 plus 5?", SYSTEM, first=False)] and st[
        "tgt"
    ] == ["7", "10"]
