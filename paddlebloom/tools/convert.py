"""Convert instruction data between formats (BELLE's convert_to_conv_data, and to src/tgt).

    python -m paddlebloom.tools.convert --input alpaca.json --output conv.jsonl --to conversations
    python -m paddlebloom.tools.convert --input alpaca.json --output st.jsonl --to src_tgt [--template belle]

Any readable format is accepted as input; the output is JSON lines.
"""

import argparse
import json
import sys

from ..atomic import write_file_atomic
from ..cli import run_main
from ..data.formats import to_dialogue
from ..data.readers import iter_records
from ..data.templates import TEMPLATES


def convert_record(record: dict, to: str, where: str, template=None, index: int = 0) -> dict:
    """A system prompt stays a `system` field in conversations; src/tgt has no such field, so it
    is written into the first source, as the template (default: plain) renders it."""
    dialogue = to_dialogue(record, where=where)
    turns = dialogue.turns
    if turns[0][0] is None:
        raise ValueError(f"{where}: plain text has no instruction/response turns to convert")
    if to == "conversations":
        messages = []
        for query, answer in turns:
            messages += [{"from": "human", "value": query}, {"from": "assistant", "value": answer}]
        converted = {"id": str(record.get("id", index)), "conversations": messages}
        return {**converted, "system": dialogue.system} if dialogue.system else converted
    template = template or TEMPLATES["plain"]
    src = [template.render(q, dialogue.system, first=i == 0) for i, (q, _) in enumerate(turns)]
    if len(turns) == 1:
        return {"src": src[0], "tgt": turns[0][1]}
    return {"src": src, "tgt": [a for _, a in turns]}


def convert(input_path: str, output_path: str, to: str, template_name=None) -> int:
    template = TEMPLATES[template_name] if template_name else None
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as out:
            for n, record in iter_records(input_path):
                out.write(
                    json.dumps(convert_record(record, to, f"{input_path}:{n}", template, count), ensure_ascii=False)
                    + "\n"
                )
                count += 1

    write_file_atomic(output_path, write)
    return count


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Convert Alpaca/BELLE/src-tgt data to conversations or src/tgt.")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--to", required=True, choices=("conversations", "src_tgt"))
    p.add_argument("--template", choices=sorted(TEMPLATES), help="with --to src_tgt: apply this prompt template to src")
    args = p.parse_args(argv)
    return run_main(
        "convert",
        lambda: print(f"wrote {convert(args.input, args.output, args.to, args.template)} records to {args.output}"),
    )


if __name__ == "__main__":
    sys.exit(main())
