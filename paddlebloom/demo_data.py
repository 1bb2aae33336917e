"""The data of `make demo` (paddlebloom/demo.py), generated on the spot: the text and instruction
tasks it trains on, held-out prompts of the new instruction, and preference pairs."""

import json
import os
import random

from . import corpus


def unseen(family: str, trained, text: str, n: int, seed: int):
    """n distinct tasks of the family whose inputs appear in no training record and nowhere in the text."""
    taken = {t["input"] for t in trained}
    out = []
    for t in corpus.instruction_tasks(50 * n, seed=seed, families=(family,)):
        if t["input"] not in taken and t["input"] not in text:
            taken.add(t["input"])
            out.append(t)
    return out[:n]


def preference_pairs(tasks, seed: int):
    """The tasks as preference pairs (LLaMA-Factory's alpaca form): the right answer chosen,
    another word of the same list rejected."""
    rng = random.Random(seed)
    pairs = []
    for t in tasks:
        wrong = [w for w in t["input"].split() if w != t["output"]]
        if wrong:
            pairs.append(
                {
                    "instruction": t["instruction"],
                    "input": t["input"],
                    "chosen": t["output"],
                    "rejected": rng.choice(wrong),
                }
            )
    return pairs


def write_data(out: str, held_out: int, skill_families, new_instruction: str) -> dict:
    """The demo's files under OUT: the generated text, the skills and the new instruction (as
    demonstrations and as preference pairs), HELD_OUT prompts of the new instruction never
    trained on, and text for perplexity. Returns {file name: path}."""
    skills = corpus.instruction_tasks(2000, seed=1, families=skill_families)
    new = corpus.instruction_tasks(1000, seed=2, families=(new_instruction,))
    # Several sentences per line, and held-out text in the same shape (one paragraph), so
    # perplexity measures the model on text like what it learned, sentence boundaries included.
    sentences = corpus.sentences(8000, seed=0) + corpus.recall_passages(4000, seed=0)
    random.Random(0).shuffle(sentences)
    text = "\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4)) + "\n"
    checks = unseen(new_instruction, new + skills, text, held_out, seed=777)
    paths = {
        name: os.path.join(out, name)
        for name in (
            "corpus.txt",
            "skills.json",
            "new_instruction.json",
            "held_out.jsonl",
            "eval_text.txt",
            "preferences.jsonl",
            "held_out_preferences.jsonl",
        )
    }
    with open(paths["corpus.txt"], "w", encoding="utf-8") as f:
        f.write(text)
    with open(paths["eval_text.txt"], "w", encoding="utf-8") as f:
        f.write(" ".join(corpus.sentences(300, seed=12345)) + "\n")
    for name, records in (("skills.json", skills), ("new_instruction.json", new)):
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False)
    with open(paths["held_out.jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in checks)
    for name, records in (
        ("preferences.jsonl", preference_pairs(new, seed=3)),
        ("held_out_preferences.jsonl", preference_pairs(checks, seed=4)),
    ):
        with open(paths[name], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return paths
