"""A tokenised training set on disk: memory-mapped ids, labels and offsets.

Layout of a store directory: meta.json, ids.npy and labels.npy (all examples concatenated,
int32), offsets.npy (int64, n + 1 boundaries). Reading maps the arrays, so time to the first
step does not grow with tokenisation work.
"""

import json
import os
from typing import List, Sequence, Tuple

import numpy as np

from ..atomic import atomic_directory
from .readers import DataError

MAGIC = "paddlebloom-pretokenized-v1"


def is_pretokenized(path: str) -> bool:
    meta = os.path.join(path, "meta.json")
    if not os.path.isfile(meta):
        return False
    with open(meta, encoding="utf-8") as f:
        return json.load(f).get("format") == MAGIC


def write_pretokenized(examples: Sequence[Tuple[np.ndarray, np.ndarray]], directory: str, meta: dict) -> None:
    lengths = np.asarray([len(x) for x, _ in examples], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with atomic_directory(directory) as tmp:
        np.save(os.path.join(tmp, "ids.npy"), np.concatenate([x for x, _ in examples]).astype(np.int32))
        np.save(os.path.join(tmp, "labels.npy"), np.concatenate([y for _, y in examples]).astype(np.int32))
        np.save(os.path.join(tmp, "offsets.npy"), offsets)
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({"format": MAGIC, "n_examples": len(examples), "n_tokens": int(offsets[-1]), **meta}, f, indent=2)


def check_compatible(directory: str, tokenizer, template_name: str, src_length: int, tgt_length: int) -> None:
    """A store is only valid for the tokenizer, template and lengths it was made with."""
    with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("tokenizer") != tokenizer.fingerprint():
        raise DataError(f"{directory}:0: tokenised with another tokenizer; re-run pretokenize with this model")
    made = (meta.get("template"), meta.get("src_length"), meta.get("tgt_length"))
    if made != (template_name, src_length, tgt_length):
        raise DataError(
            f"{directory}:0: made with template/src_length/tgt_length {made}, this run asks for "
            f"{(template_name, src_length, tgt_length)}; pass the same flags or re-run pretokenize"
        )


def load_pretokenized(directory: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    ids = np.load(os.path.join(directory, "ids.npy"), mmap_mode="r")
    labels = np.load(os.path.join(directory, "labels.npy"), mmap_mode="r")
    offsets = np.load(os.path.join(directory, "offsets.npy"))
    return [(ids[a:b], labels[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
