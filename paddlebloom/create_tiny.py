"""Build a small, properly initialised BLOOM checkpoint with a real tokenizer trained on a corpus.

    python -m paddlebloom.create_tiny --output_dir DIR [--vocab_size 2000 --hidden_size 64
        --n_layer 2 --n_head 4 --corpus FILE ... --seed 0]

The result loads here (`--model_name_or_path DIR`) and in plain PaddleNLP
(`BloomForCausalLM.from_pretrained`, `AutoTokenizer.from_pretrained`).
"""

import argparse
import json
import os
import sys
from typing import List, Optional

import paddle

from . import corpus as generated
from .atomic import atomic_directory
from .config import BloomConfig
from .data.readers import read_records
from .model import BloomForCausalLM
from .runtime import quiet
from .tokenizer import train_byte_level_bpe
from .weights import WEIGHTS, save_weights


def read_corpus(paths: List[str]) -> List[str]:
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            if path.endswith((".json", ".jsonl")):
                for record in read_records(path):
                    texts.append(" ".join(str(v) for v in record.values() if isinstance(v, str)))
            else:
                texts.extend(line.rstrip("\n") for line in f if line.strip())
    return texts


def create_tiny(
    output_dir: str,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    corpus: Optional[List[str]] = None,
    seed: int = 0,
    max_position_hint: int = 2048,
) -> str:
    if hidden_size % n_head:
        raise ValueError(f"--hidden_size {hidden_size} is not divisible by --n_head {n_head}")
    texts = read_corpus(corpus) if corpus else generated.sentences(4000, seed)
    if not texts:
        raise ValueError(f"corpus {corpus} is empty")
    tokenizer = train_byte_level_bpe(texts, vocab_size)
    # BLOOM pads the embedding beyond the tokenizer (250,680 -> 250,880); we round up to 8 so
    # tensor-parallel degrees 2, 4 and 8 divide it.
    padded_vocab = -(-max(vocab_size, tokenizer.vocab_size) // 8) * 8
    config = BloomConfig(vocab_size=padded_vocab, hidden_size=hidden_size, n_layer=n_layer, n_head=n_head)
    paddle.seed(seed)
    model = BloomForCausalLM(config)  # normal(0, 0.02) weights, zero biases, unit LayerNorms
    with atomic_directory(output_dir) as tmp:
        save_weights({k: v.numpy() for k, v in model.state_dict().items()}, os.path.join(tmp, WEIGHTS))
        config.save(tmp)
        tokenizer.save_pretrained(tmp, model_max_length=max_position_hint)
        with open(os.path.join(tmp, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(
                {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, "decode_strategy": "greedy_search"},
                f,
                indent=2,
            )
    return output_dir


def main(argv=None) -> int:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--vocab_size", type=int, default=2000)
    p.add_argument("--hidden_size", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument(
        "--corpus", nargs="*", help="text/JSON files to train the tokenizer on (default: a generated zh+en corpus)"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        create_tiny(
            args.output_dir, args.vocab_size, args.hidden_size, args.n_layer, args.n_head, args.corpus, args.seed
        )
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"create_tiny: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
