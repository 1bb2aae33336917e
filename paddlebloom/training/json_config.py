"""PaddleNLP llm-style configs: `finetune_generation.py config.json [--flag value ...]`.

The file is one flat JSON object whose keys are the script's flag names (aliases included, as in
PaddleNLP's llm/config/*/*.json); it becomes the equivalent command line, and flags written after
the file override it. A key the script does not have is an error naming the file, line and key.
"""

import argparse
import json
from typing import List

from ..data.readers import DataError, decode_utf8


def _line_of(text: str, key: str) -> int:
    at = text.find(json.dumps(key))
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def argv_from_json(path: str, parser: argparse.ArgumentParser) -> List[str]:
    try:
        with open(path, "rb") as f:
            text = decode_utf8(f.read(), path)
    except FileNotFoundError:
        raise DataError(f"{path}:0: config file not found") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}:1: expected one flat JSON object of flag names, got {type(config).__name__}")
    argv = []
    for key, value in config.items():
        action = parser._option_string_actions.get(f"--{key}")
        where = f"{path}:{_line_of(text, key)}"
        if action is None or action.dest == "help":
            raise DataError(f"{where}: unknown key '{key}': not a flag of {parser.prog}")
        if value is None:
            continue  # null: the flag's default
        if isinstance(value, dict) or (isinstance(value, list) and action.nargs not in ("+", "*")):
            raise DataError(
                f"{where}: key '{key}' takes {'a list' if action.nargs in ('+', '*') else 'one value'}, got "
                f"{json.dumps(value)[:60]}"
            )
        values = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(("true" if v else "false") if isinstance(v, bool) else str(v) for v in values)]
    return argv
