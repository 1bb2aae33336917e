"""A small Chinese + English corpus the project generates itself (no downloads anywhere).

It trains the tiny tokenizer, pre-trains the demo model, and gives instruction tasks whose
answers can be checked exactly (held-out prompts of the same families test the tuned model).
"""

import random
from typing import Dict, Iterator, List

COLORS = [
    ("red", "红色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("yellow", "黄色"),
    ("black", "黑色"),
    ("white", "白色"),
    ("purple", "紫色"),
    ("orange", "橙色"),
]
ANIMALS = [
    ("cat", "猫"),
    ("dog", "狗"),
    ("bird", "鸟"),
    ("fish", "鱼"),
    ("horse", "马"),
    ("rabbit", "兔子"),
    ("tiger", "老虎"),
    ("panda", "熊猫"),
]
CITIES = [
    ("Beijing", "北京"),
    ("Shanghai", "上海"),
    ("Paris", "巴黎"),
    ("London", "伦敦"),
    ("Tokyo", "东京"),
    ("Berlin", "柏林"),
    ("Rome", "罗马"),
    ("Madrid", "马德里"),
]
FOODS = [
    ("rice", "米饭"),
    ("noodles", "面条"),
    ("apples", "苹果"),
    ("bread", "面包"),
    ("tea", "茶"),
    ("soup", "汤"),
    ("dumplings", "饺子"),
    ("milk", "牛奶"),
]
NAMES = [("Alice", "小红"), ("Bob", "小明"), ("Carol", "小丽"), ("David", "小刚"), ("Emma", "小芳"), ("Frank", "小华")]
ZH_DIGITS = "零一二三四五六七八九十"


def zh_number(n: int) -> str:
    """Chinese numerals for 0..99."""
    if n <= 10:
        return ZH_DIGITS[n]
    tens, ones = divmod(n, 10)
    return (ZH_DIGITS[tens] if tens > 1 else "") + "十" + (ZH_DIGITS[ones] if ones else "")


def sentences(n: int, seed: int = 0) -> List[str]:
    """n varied sentences, about half English and half Chinese."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        (c_en, c_zh), (a_en, a_zh), (t_en, t_zh), (f_en, f_zh), (p_en, p_zh) = (
            rng.choice(COLORS),
            rng.choice(ANIMALS),
            rng.choice(CITIES),
            rng.choice(FOODS),
            rng.choice(NAMES),
        )
        x, y = rng.randint(0, 9), rng.randint(0, 9)
        out.append(
            rng.choice(
                [
                    f"{p_en} has a {c_en} {a_en} that lives in {t_en}.",
                    f"In {t_en}, {p_en} likes to eat {f_en} every morning.",
                    f"The {a_en} is {c_en}, and it likes {f_en}.",
                    f"{x} plus {y} equals {x + y}.",
                    f"{p_en} went to {t_en} with a {a_en}. It was a good day.",
                    f"The word for {c_en} in Chinese is {c_zh}.",
                    f"{a_en} in Chinese is {a_zh}. {f_en} in Chinese is {f_zh}. {t_en} in Chinese is {t_zh}.",
                    f"{p_zh}有一只住在{t_zh}的{c_zh}的{a_zh}。",
                    f"在{t_zh}，{p_zh}每天早上喜欢吃{f_zh}。",
                    f"这只{a_zh}是{c_zh}的，它喜欢{f_zh}。",
                    f"{zh_number(x)}加{zh_number(y)}等于{zh_number(x + y)}。",
                    f"{p_zh}和{a_zh}一起去了{t_zh}，今天天气很好。",
                    f"{a_en}的中文是{a_zh}，{t_en}的中文是{t_zh}。",
                ]
            )
        )
    return out


TASK_FAMILIES = ("repeat", "last_word", "first_word", "add", "translate")


def make_task(family: str, rng: random.Random) -> Dict[str, str]:
    """One Alpaca-style record of a family; the answer is exactly checkable."""
    words = [rng.choice(ANIMALS + COLORS + FOODS)[0] for _ in range(3)]
    if family == "repeat":
        return {"instruction": "Repeat the words.", "input": " ".join(words), "output": " ".join(words)}
    if family == "last_word":
        return {"instruction": "What is the last word?", "input": " ".join(words), "output": words[-1]}
    if family == "first_word":
        return {"instruction": "最前面的词是什么？", "input": " ".join(words), "output": words[0]}
    if family == "add":
        x, y = rng.randint(0, 9), rng.randint(0, 9)
        return {"instruction": f"What is {x} plus {y}?", "input": "", "output": str(x + y)}
    en, zh = rng.choice(COLORS + ANIMALS + FOODS + CITIES)
    return {"instruction": "Translate into Chinese.", "input": en, "output": zh}


def instruction_tasks(n: int, seed: int = 0, families=TASK_FAMILIES) -> List[Dict[str, str]]:
    """n records drawn evenly from the families (the demo's instruction set and its held-out prompts)."""
    rng = random.Random(seed)
    return [dict(make_task(families[i % len(families)], rng), family=families[i % len(families)]) for i in range(n)]


def recall_passages(n: int, seed: int = 0) -> List[str]:
    """n short passages that quote a list of words and then recall parts of it.

    Real language models learn to copy from context in pre-training (quotes, repeated names);
    the tiny demo model gets the same skill from these, so that instruction tuning only has to
    teach the instruction format, not copying itself.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(ANIMALS + COLORS + FOODS)[0] for _ in range(3)]
        listed = " ".join(words)
        out.append(
            rng.choice(
                [
                    f"The list is {listed}. The first word is {words[0]}. The last word is {words[-1]}.",
                    f"Say {listed} again: {listed}.",
                    f"词语：{listed}。第一个词是{words[0]}，最后一个词是{words[-1]}。",
                    f"{words[0]} comes before {words[1]} in the list {listed}, and {words[-1]} comes last.",
                ]
            )
        )
    return out


def iter_corpus(n: int, seed: int = 0) -> Iterator[str]:
    yield from sentences(n, seed)
