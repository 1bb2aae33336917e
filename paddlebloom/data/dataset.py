"""Examples from files, padded batches, and a data order that depends only on (seed, step).

Resuming needs no iterator state: the examples of step k are a pure function of the seed, so a
run restarted from checkpoint-k sees exactly what the uninterrupted run saw.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from .encode import IGNORE, encode_turns, template_overhead
from .formats import to_dialogue
from .pretokenized import check_compatible, is_pretokenized, load_pretokenized
from .readers import DataError, iter_records
from .templates import Template

Example = Tuple[np.ndarray, np.ndarray]


def check_src_length(tokenizer, template: Template, src_length: int) -> None:
    if src_length < template_overhead(tokenizer, template) + 1:
        raise DataError(
            f"--src_length:0: {src_length} tokens cannot hold the '{template.name}' template "
            f"({template_overhead(tokenizer, template)} tokens) plus a question"
        )


def iter_file_records(path: str, show_progress: bool = True):
    """("FILE:LINE", record) of one file, behind a progress bar; a file without records is an error."""
    count = 0
    for line, record in tqdm(iter_records(path), desc=f"tokenizing {path}", disable=not show_progress, unit=" rec"):
        count += 1
        yield f"{path}:{line}", record
    if not count:
        raise DataError(f"{path}:1: no records")


def load_examples(
    paths: Sequence[str],
    tokenizer,
    template: Template,
    src_length: int,
    tgt_length: int,
    data_format: Optional[str] = None,
    show_progress: bool = True,
) -> List[Example]:
    """Read and encode every record of every file (a pretokenized store is read as it is)."""
    check_src_length(tokenizer, template, src_length)
    examples: List[Example] = []
    for path in paths:
        if is_pretokenized(path):
            check_compatible(path, tokenizer, template.name, src_length, tgt_length)
            examples += load_pretokenized(path)
            continue
        for where, record in iter_file_records(path, show_progress):
            dialogue = to_dialogue(record, data_format, where=where)
            examples.append(encode_turns(dialogue.turns, tokenizer, template, src_length, tgt_length, dialogue.system))
    return examples


def collate(examples: Sequence[Example], pad_token_id: int):
    """Right-padded numpy batch: input_ids, attention_mask, labels (padding scores nothing)."""
    width = max(len(ids) for ids, _ in examples)
    ids = np.full((len(examples), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)], mask[row, : len(x)], labels[row, : len(y)] = x, 1, y
    return ids, mask, labels


@dataclass
class BatchPlan:
    """Which examples each optimizer step uses, per data-parallel rank and micro-batch."""

    n_examples: int
    micro_batch: int
    accumulation: int = 1
    dp_degree: int = 1
    dp_rank: int = 0
    seed: int = 0

    @property
    def examples_per_step(self) -> int:
        return self.micro_batch * self.accumulation * self.dp_degree

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.n_examples / self.examples_per_step))

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.RandomState(self.seed + epoch).permutation(self.n_examples)

    def micro_batches(self, step: int) -> List[List[int]]:
        """Example indices of this rank's micro-batches for 0-based optimizer step `step`."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        take = np.arange(k * self.examples_per_step, (k + 1) * self.examples_per_step) % self.n_examples
        chosen = order[take].reshape(self.accumulation, self.dp_degree, self.micro_batch)
        return [list(chosen[a, self.dp_rank]) for a in range(self.accumulation)]
