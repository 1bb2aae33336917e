"""Token-length distributions of prompts and responses: a PNG histogram and a percentile table.

python -m paddlebloom.tools.stats --model_name_or_path CKPT --input train.json --output_dir stats/
"""

import argparse
import json
import os
import sys

import numpy as np

from ..atomic import write_file_atomic
from ..cli import run_main
from ..data.formats import to_dialogue
from ..data.readers import iter_records
from ..data.templates import TEMPLATES, get_template
from ..loading import load_tokenizer
from ..plots import pyplot, save_png

PERCENTILES = (50, 90, 95, 99, 100)


def lengths(path: str, tokenizer, template) -> dict:
    """Token counts per record: prompt (all turns' templated queries) and response (answers + EOS)."""
    prompts, responses = [], []
    for n, record in iter_records(path):
        dialogue = to_dialogue(record, where=f"{path}:{n}")
        turns = dialogue.turns
        queries = [template.render(q, dialogue.system, first=i == 0) for i, (q, _) in enumerate(turns) if q is not None]
        prompts.append(sum(len(ids) for ids in tokenizer.encode_batch(queries)) if queries else 0)
        responses.append(sum(len(ids) + 1 for ids in tokenizer.encode_batch([a for _, a in turns])))
    return {"prompt": np.asarray(prompts), "response": np.asarray(responses)}


def table(dist: dict) -> str:
    head = "| part | records | mean | " + " | ".join(f"p{p}" for p in PERCENTILES) + " |"
    rows = [head, "|" + "---|" * (3 + len(PERCENTILES))]
    for part, values in dist.items():
        cells = [f"{int(np.percentile(values, p))}" for p in PERCENTILES]
        rows.append(f"| {part} | {len(values)} | {values.mean():.1f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(dist: dict, path: str, title: str) -> None:
    fig, axes = pyplot().subplots(1, len(dist), figsize=(5 * len(dist), 3.6), dpi=100)
    for ax, (part, values) in zip(np.atleast_1d(axes), dist.items()):
        ax.hist(
            values, bins=min(60, max(5, len(np.unique(values)))), color="tab:blue" if part == "prompt" else "tab:orange"
        )
        for p in (50, 95):
            ax.axvline(np.percentile(values, p), color="k", ls="--", lw=1)
            ax.text(np.percentile(values, p), ax.get_ylim()[1] * 0.9, f" p{p}", fontsize=8)
        ax.set_title(f"{part} length (tokens)")
        ax.set_xlabel("tokens")
        ax.set_ylabel("records")
    fig.suptitle(title)
    save_png(fig, path)


def stats(model_name_or_path: str, input_path: str, output_dir: str, template: str = "belle") -> str:
    dist = lengths(input_path, load_tokenizer(model_name_or_path), get_template(template))
    os.makedirs(output_dir, exist_ok=True)
    plot(dist, os.path.join(output_dir, "length_distribution.png"), os.path.basename(input_path))
    text = table(dist)
    write_file_atomic(os.path.join(output_dir, "length_table.md"), lambda tmp: open(tmp, "w").write(text + "\n"))
    summary = {
        part: {f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES}
        | {"mean": float(v.mean()), "records": int(len(v))}
        for part, v in dist.items()
    }
    write_file_atomic(
        os.path.join(output_dir, "length_stats.json"), lambda tmp: open(tmp, "w").write(json.dumps(summary, indent=2))
    )
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Token-length distribution of a training file (PNG + table).")
    p.add_argument("--model_name_or_path", required=True, help="checkpoint whose tokenizer counts the tokens")
    p.add_argument("--input", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--template", default="belle", choices=sorted(TEMPLATES))
    args = p.parse_args(argv)
    return run_main("stats", lambda: print(stats(args.model_name_or_path, args.input, args.output_dir, args.template)))


if __name__ == "__main__":
    sys.exit(main())
