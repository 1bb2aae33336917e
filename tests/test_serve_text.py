"""Issue 8: the server's text handling without a server — streamed text holds back partial
characters and stop strings, chat messages become turns, a system prompt is the template's as in training."""

import pytest


def test_text_stream_holds_back_partial_characters_and_stop_strings(exported_tiny):
    from paddlebloom.serving.responses import TextStream
    from paddlebloom.tokenizer import BloomTokenizer

    tokenizer = BloomTokenizer.from_pretrained(exported_tiny)
    text = "猫 sat on the mat. END of it"
    ids = tokenizer.encode(text)
    plain = TextStream(tokenizer, [])
    pieces = [plain.feed([i]) for i in ids] + [plain.finish()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    stopping = TextStream(tokenizer, ["END", "xyz"])
    out = ""
    for i in ids:
        out += stopping.feed([i])
        if stopping.stopped:
            break
    assert stopping.stopped and out + stopping.finish() == "猫 sat on the mat. "


def test_chat_messages_become_turns():
    from paddlebloom.serving.api import ApiError, chat_turns

    system, history, query = chat_turns(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "Now in French."},
            {"role": "user", "content": "2+2?"},
        ]
    )
    assert system == "Be brief." and history == [("hi", "hello")] and query == "Now in French.\n\n2+2?"
    for bad in (
        [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
        [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        [{"role": "user", "content": 5}],
        [{"role": "user", "content": "a", "extra": 1}],
        "hi",
    ):
        with pytest.raises(ApiError):
            chat_turns(bad)


def test_chat_system_prompt_is_the_templates_as_in_training(exported_tiny):
    """A leading system message goes into the template's system slot: the server's prompt ids are
    those of the same conversation as a training record ({"messages": ...}) up to its last answer."""
    from paddlebloom.data.encode import encode_turns
    from paddlebloom.data.formats import to_dialogue
    from paddlebloom.data.templates import get_template
    from paddlebloom.serving.api import Limits, parse_chat
    from paddlebloom.tokenizer import BloomTokenizer

    tokenizer, template = BloomTokenizer.from_pretrained(exported_tiny), get_template("belle")
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
        {"role": "user", "content": "And of Italy?"},
    ]
    served = parse_chat({"messages": messages}, tokenizer, template, Limits(512, 16, {})).prompts[0]
    dialogue = to_dialogue({"messages": messages + [{"role": "assistant", "content": "Rome"}]})
    ids, _ = encode_turns(dialogue.turns, tokenizer, template, 512, 64, dialogue.system)
    assert "Answer in one word." in tokenizer.decode(served)
    assert served == ids[: len(served)].tolist() and tokenizer.decode(ids[len(served) :].tolist()).startswith("Rome")
