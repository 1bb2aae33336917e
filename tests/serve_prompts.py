"""The prompts of the server tests (test_serve.py, test_serve_chat_page.py)."""

from paddlebloom import corpus


def sentence_prompts():
    # Beginnings of the corpus's sentences: the tiny model goes on with them for many tokens.
    sentences = corpus.sentences(60, seed=11)
    english = [s for s in sentences if s.isascii() and len(s.split()) >= 6]
    chinese = [s for s in sentences if not s.isascii() and " " not in s]
    # Chinese characters are 3 bytes in several byte-level tokens: streaming must not split them.
    return [" ".join(s.split()[:n]) for s, n in zip(english, (2, 3, 4, 5, 2))] + [chinese[0][:3]]
