"""Sliding windows over one long token stream: every token after the first scored exactly once.

Megatron's and PaddleNLP's `--overlapping_eval` convention: windows of `seq_length` input
tokens start every `stride` tokens. Window 0 scores all its targets; every later window scores
only its targets past the end of the previous window -- the last `stride` of a full window --
so each of tokens[1:] is scored once, with as much left context (up to `seq_length` tokens,
itself the last input) as the window gives it. stride == seq_length means disjoint windows.
"""

from dataclasses import dataclass
from typing import List


@dataclass(frozen=True)
class Window:
    start: int  # index of the first input token; inputs = tokens[start:start+length]
    length: int  # inputs in this window (the last window may be short)
    first_scored: int  # labels[first_scored:] are scored (labels = tokens[start+1:start+length+1])

    @property
    def scored(self) -> int:
        return self.length - self.first_scored


def plan_windows(n_tokens: int, seq_length: int, stride: int) -> List[Window]:
    if seq_length < 1:
        raise ValueError(f"--seq_length must be >= 1, got {seq_length}")
    if not 1 <= stride <= seq_length:
        raise ValueError(f"--overlapping_eval must be between 1 and --seq_length ({seq_length}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n_tokens}")
    last_target = n_tokens - 1  # targets are tokens[1..n-1]
    windows = [Window(0, min(seq_length, last_target), 0)]
    covered = windows[0].length  # targets 1..covered are scored
    start = 0
    while covered < last_target:
        start += stride
        length = min(seq_length, last_target - start)
        first = covered - start  # label offset j scores target start+1+j; the first new one is covered+1
        windows.append(Window(start, length, first))
        covered = start + length
    return windows
