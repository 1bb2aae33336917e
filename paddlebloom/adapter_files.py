"""Small shared pieces of the adapter folders (lora/, prefix/): JSON configs, weights on disk."""
import json
import os
from dataclasses import asdict, fields

import numpy as np
import paddle


def save_config(obj, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(asdict(obj), f, indent=2, sort_keys=True)


def load_config(cls, path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.path.dirname(path) or '.'}: no {os.path.basename(path)} (not a {cls.__name__} adapter directory)")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in known})


def read_weights(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: adapter weights not found")
    return {k: np.asarray(v) for k, v in paddle.load(path, return_numpy=True).items()}
