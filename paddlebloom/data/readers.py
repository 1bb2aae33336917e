"""Read records from JSON lines, a JSON array, or plain text, with file:line in every error."""

import json
import os
from typing import Iterator, List, Tuple


class DataError(ValueError):
    """Bad input data; the message starts with `file:line:`."""


def _iter_json_array(path: str, text: str) -> Iterator[Tuple[int, dict]]:
    # Decode element by element (instead of json.load) so each record keeps its line number;
    # lines are counted incrementally (counting from the start each time is quadratic).
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted_to = 1 + text.count("\n", 0, pos), pos
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        if pos >= len(text):
            raise DataError(f"{path}:{line}: JSON array is not closed")
        if text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        yield line, value
        pos = end


def decode_utf8(raw: bytes, path: str, first_line: int = 1) -> str:
    """bytes -> str; text that is not UTF-8 is a DataError naming the file and the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); convert the file to UTF-8"
        ) from None


def iter_text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line_number, line) of a UTF-8 text file, streamed; a byte-order mark is dropped."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = decode_utf8(raw, path, n)
            yield n, line.lstrip("\ufeff") if n == 1 else line


def iter_records(path: str) -> Iterator[Tuple[int, dict]]:
    """Yield (line_number, record). `.txt` files give one {"text": line} per non-empty line."""
    if not os.path.isfile(path):
        raise DataError(f"{path}:0: file not found")
    with open(path, "rb") as f:
        head = (
            f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff")
        )  # only sniffed: lines are decoded strictly below
    if not head.strip():
        raise DataError(f"{path}:1: empty file")
    if path.endswith(".txt"):
        for n, line in iter_text_lines(path):
            if line.strip():
                yield n, {"text": line.rstrip("\n")}
        return
    if head.lstrip().startswith("["):
        with open(path, "rb") as f:
            text = decode_utf8(f.read(), path).lstrip("\ufeff")
        for n, value in _iter_json_array(path, text):
            if not isinstance(value, dict):
                raise DataError(f"{path}:{n}: record is {type(value).__name__}, expected a JSON object")
            yield n, value
        return
    for n, _, value in iter_json_lines(path):
        yield n, value


def iter_json_lines(path: str) -> Iterator[Tuple[int, str, dict]]:
    """(line_number, raw_line, record) of a JSON-lines file, streamed; blank lines skipped."""
    for n, line in iter_text_lines(path):
        if not line.strip():
            continue
        yield n, line, parse_json_line(line, path, n)


def parse_json_line(line: str, path: str, n: int) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: invalid JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}:{n}: record is {type(value).__name__}, expected a JSON object")
    return value


def stdin_prompts(stream) -> List[Tuple[int, None, str]]:
    """(line_number, no record, prompt) of each non-empty line: raw prompts, one per line."""
    return [(n, None, line.rstrip("\n")) for n, line in enumerate(stream, 1) if line.strip()]


def read_records(path: str):
    """All records of a file (small files: tokenizer corpora)."""
    return [record for _, record in iter_records(path)]
