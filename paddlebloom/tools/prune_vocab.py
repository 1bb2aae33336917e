"""Vocabulary pruning (LLMPruner-style): keep the tokens your corpora use, shrink the model.

    python -m paddlebloom.tools.prune_vocab --model_name_or_path CKPT --corpus zh.txt data.json ... --output_dir PRUNED

Kept: the special tokens, all 256 byte symbols (so any text still encodes), every token the
corpora produce, and every token a kept token is merged from (its BPE ancestors). A merge
survives when its two parts and its result are kept. On text whose original tokens are all
kept, the pruned tokenizer applies exactly the original merges in the original order, so it
produces the same tokens (renumbered); the embedding / LM-head rows are copied for them.
"""

import argparse
import json
import os
import sys
from typing import Dict, Iterable, List, Tuple

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers
from tqdm import tqdm

from ..atomic import atomic_directory
from ..cli import run_main
from ..config import BloomConfig
from ..create_tiny import read_corpus
from ..loading import resolve_model_dir
from ..tokenizer import SPECIAL_TOKENS, BloomTokenizer
from ..weights import WEIGHTS, read_state_for_rank, save_weights

EMBEDDING = "bloom.word_embeddings.weight"


def _merge_pairs(raw_merges) -> List[Tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in raw_merges]


def used_token_ids(tokenizer: BloomTokenizer, texts: Iterable[str], chunk: int = 2048) -> set:
    used, batch = set(), []
    for text in tqdm(texts, desc="counting tokens", unit=" texts"):
        batch.append(text)
        if len(batch) == chunk:
            used.update(i for ids in tokenizer.encode_batch(batch) for i in ids)
            batch = []
    used.update(i for ids in tokenizer.encode_batch(batch) for i in ids)
    return used


def choose_tokens(
    vocab: Dict[str, int], merges: List[Tuple[str, str]], used_ids: set, multiple_of: int = 8
) -> List[str]:
    """The kept tokens in their original id order."""
    by_id = {i: t for t, i in vocab.items()}
    parents = {a + b: (a, b) for a, b in merges}
    keep = set(SPECIAL_TOKENS) | set(pre_tokenizers.ByteLevel.alphabet()) | {by_id[i] for i in used_ids if i in by_id}
    stack = list(keep)
    while stack:  # BPE ancestors: a kept token must be buildable
        token = stack.pop()
        for part in parents.get(token, ()):
            if part not in keep:
                keep.add(part)
                stack.append(part)
    # Round the vocabulary up (tensor-parallel degrees must divide it) with the next merges
    # whose parts are kept: real tokens with trained rows, never dead padding rows.
    for a, b in merges:
        if len(keep) % multiple_of == 0:
            break
        if a in keep and b in keep and a + b not in keep:
            keep.add(a + b)
    return sorted((t for t in keep if t in vocab), key=vocab.__getitem__)


def pruned_tokenizer_json(raw: dict, kept: List[str]) -> dict:
    new_vocab = {t: i for i, t in enumerate(kept)}
    pairs = _merge_pairs(raw["model"]["merges"])
    kept_merges = [(a, b) for a, b in pairs if a in new_vocab and b in new_vocab and a + b in new_vocab]
    as_strings = bool(raw["model"]["merges"]) and isinstance(raw["model"]["merges"][0], str)
    out = json.loads(json.dumps(raw))
    out["model"]["vocab"] = new_vocab
    out["model"]["merges"] = [f"{a} {b}" for a, b in kept_merges] if as_strings else [[a, b] for a, b in kept_merges]
    for added in out.get("added_tokens", []):
        added["id"] = new_vocab[added["content"]]
    return out


def prune(model_name_or_path: str, corpora: List[str], output_dir: str) -> dict:
    model_dir = resolve_model_dir(model_name_or_path)
    tokenizer = BloomTokenizer.from_pretrained(model_dir)
    raw = json.loads(tokenizer.backend.to_str())
    texts = read_corpus(corpora)
    if not texts:
        raise ValueError(f"corpora {corpora} contain no text")
    kept = choose_tokens(raw["model"]["vocab"], _merge_pairs(raw["model"]["merges"]), used_token_ids(tokenizer, texts))
    old_ids = np.asarray([raw["model"]["vocab"][t] for t in kept], dtype=np.int64)
    config = BloomConfig.load(model_dir)
    state = read_state_for_rank(model_dir)
    before = sum(v.size for v in state.values())
    state[EMBEDDING] = state[EMBEDDING][old_ids]  # tied: the LM head shrinks with it
    after = sum(v.size for v in state.values())
    pruned = BloomTokenizer(Tokenizer.from_str(json.dumps(pruned_tokenizer_json(raw, kept))))
    with atomic_directory(output_dir) as tmp:
        save_weights(state, os.path.join(tmp, WEIGHTS))
        BloomConfig(**{**config.__dict__, "vocab_size": len(kept), "tensor_parallel_degree": 1}).save(tmp)
        pruned.save_pretrained(tmp)
        with open(os.path.join(tmp, "vocab_map.json"), "w", encoding="utf-8") as f:
            json.dump({"new_to_old": old_ids.tolist()}, f)
    return {
        "vocab_before": int(config.vocab_size),
        "vocab_after": len(kept),
        "params_before": int(before),
        "params_after": int(after),
        "params_removed_pct": round(100.0 * (before - after) / before, 2),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Prune a BLOOM vocabulary to the tokens some corpora use.")
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--corpus", required=True, nargs="+", help="text (.txt) or JSON / JSON-lines files")
    p.add_argument("--output_dir", required=True)
    args = p.parse_args(argv)
    return run_main(
        "prune_vocab", lambda: print(json.dumps(prune(args.model_name_or_path, args.corpus, args.output_dir)))
    )


if __name__ == "__main__":
    sys.exit(main())
