"""Undo WikiText's tokenised markup so a byte-level BPE sees ordinary text.

WikiText ships pre-tokenised: numbers split as `1 @,@ 000`, `3 @.@ 5`, `well @-@ known`,
punctuation and brackets surrounded by spaces, contractions split (`city 's`, `don 't`) and
headings written `= = Gameplay = =`. Scoring that text with a sub-word tokenizer inflates the
token count and deflates perplexity, so Megatron and PaddleNLP detokenise first and report a
word-level ("adjusted") perplexity over the *original* word count. We apply the same rules, in
the same order, so the numbers are comparable.
"""

import re

# Literal replacements, applied in order. Order matters: number separators before punctuation,
# longest heading markers first.
_LITERAL = [
    ("s '", "s'"),  # plural possessive: `the players ' union`
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    (" : ", ": "),
    (" ; ", "; "),
    (" . ", ". "),
    (" ! ", "! "),
    (" ? ", "? "),
    (" , ", ", "),
]

# Paired brackets and quotes lose the inner padding: `( 24 in )` -> `(24 in)`.
_PAIRED = [
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
]

_TAIL = [
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \u00b0 ", "\u00b0"),  # `20 ° C`
    (" \n", "\n"),
    ("\n ", "\n"),
    (" 's", "'s"),
    ("n 't", "n't"),  # `don 't`
]


def detokenize_wikitext(text: str) -> str:
    for old, new in _LITERAL:
        text = text.replace(old, new)
    for pattern, repl in _PAIRED:
        text = pattern.sub(repl, text)
    for old, new in _TAIL:
        text = text.replace(old, new)
    return text


def count_original_words(raw: str) -> int:
    """Megatron's count of the *undetokenised* text: pieces between single spaces.

    It counts WikiText's tokens (each `@-@`, `,` and heading `=` is one) and glues a word to the
    line break next to it, exactly as Megatron's and PaddleNLP's evaluators do; the adjusted
    perplexity is only comparable across tools when the denominator is computed the same way.
    """
    return len(raw.strip().split(" "))


def wants_wikitext_detokenizer(path: str, choice: str) -> bool:
    if choice == "auto":
        return "wikitext" in path.lower()
    return choice == "wikitext"
