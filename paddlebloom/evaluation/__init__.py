"""Evaluation: WikiText perplexity, LAMBADA cloze accuracy, BELLE-style instruction eval.

Modules: `wikitext` (detokeniser, word counts), `windows` (sliding-window plan), `lm` (the
TP-aware scorer and its CLI), `instruct` (generation + per-class report), `judge` (the
OpenAI-compatible judge client and the rubric in `judge_rubric.txt`).
"""
