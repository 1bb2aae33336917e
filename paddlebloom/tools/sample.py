"""Keep the single-turn records of a BELLE-style file and sample a ratio of them (streamed).

    python -m paddlebloom.tools.sample --input train.jsonl --output sample.jsonl --sample_ratio 0.1 --seed 0

Like bloom_tuning's sample_data.py, for files of millions of lines: the file is read twice,
line by line (count, then copy the chosen lines), never loaded whole. The sample is exact:
round(ratio * singles) records, chosen uniformly with the seed.
"""

import argparse
import json
import sys

import numpy as np

from ..atomic import write_file_atomic
from ..cli import run_main
from ..data.formats import to_dialogue
from ..data.readers import DataError, iter_json_lines, iter_text_lines


def is_single_turn(record: dict) -> bool:
    """One question and its answer in any instruction format (history counts as turns; plain
    text and records no format reads are not single-turn)."""
    try:
        turns = to_dialogue(record, answered=False).turns
    except DataError:
        return False
    return len(turns) == 1 and turns[0][0] is not None


def _single_turn_lines(path: str):
    """Yield (line_number, raw_line) of single-turn records."""
    for n, line, record in iter_json_lines(path):
        if is_single_turn(record):
            yield n, line


def sample(input_path: str, output_path: str, ratio: float, seed: int = 0) -> dict:
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"--sample_ratio {ratio} must be in (0, 1]")
    total_lines = sum(1 for _ in iter_text_lines(input_path))
    singles = sum(1 for _ in _single_turn_lines(input_path))
    k = int(round(ratio * singles))
    chosen = (
        np.sort(np.random.default_rng(seed).choice(singles, size=k, replace=False))
        if k
        else np.zeros(0, dtype=np.int64)
    )

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as out:
            nxt = 0
            for i, (_, line) in enumerate(_single_turn_lines(input_path)):
                if nxt < k and chosen[nxt] == i:
                    out.write(line if line.endswith("\n") else line + "\n")
                    nxt += 1

    write_file_atomic(output_path, write)
    return {"lines": total_lines, "single_turn": singles, "kept": k, "multi_turn_or_other": total_lines - singles}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Sample single-turn records from a BELLE-style JSON-lines file.")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--sample_ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return run_main("sample", lambda: print(json.dumps(sample(args.input, args.output, args.sample_ratio, args.seed))))


if __name__ == "__main__":
    sys.exit(main())
