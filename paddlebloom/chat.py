"""Multi-turn chat in the terminal (predict/chat.py): history, streamed tokens, /clear, /exit.

The prompt is the conversation so far in the fine-tuning template, opened by --system if given;
when it no longer fits in --src_length tokens the oldest turns are dropped first.
"""

import argparse
import sys
from typing import List, Tuple

from .cli import run_main
from .data.encode import build_prompt
from .data.templates import get_template
from .generation import add_generation_flags, generate_ids, generation_config
from .loading import load_model
from .runtime import quiet, use_all_cores


class StreamPrinter:
    """Prints tokens as they come; holds back bytes of a character not yet complete."""

    def __init__(self, tokenizer, out=sys.stdout):
        self.tokenizer, self.out, self.ids, self.shown = tokenizer, out, [], ""

    def __call__(self, step) -> None:
        if step[0] is None:
            return
        self.ids.append(step[0])
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text


def chat(args, stdin=sys.stdin, stdout=sys.stdout) -> int:
    quiet()
    use_all_cores()
    model, tokenizer, _ = load_model(args.model_name_or_path, args.lora_path, args.prefix_path)
    config = generation_config(args, tokenizer)
    template = get_template(args.template)
    history: List[Tuple[str, str]] = []
    stdout.write("Chat with BLOOM. /clear forgets the conversation, /exit leaves.\n")
    while True:
        stdout.write("\nHuman: ")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            stdout.write("\n")
            return 0
        query = line.rstrip("\n")
        if query.strip() == "/clear":
            history.clear()
            stdout.write("(conversation cleared)\n")
            continue
        if not query.strip():
            continue
        stdout.write("Assistant: ")
        printer = StreamPrinter(tokenizer, stdout)
        prompt = build_prompt(tokenizer, template, history, query, args.src_length, args.system)
        answer_ids = generate_ids(model, [prompt], config, printer)[0]
        stdout.write("\n")
        history.append((query, tokenizer.decode(answer_ids)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Chat with a BLOOM checkpoint in the terminal.")
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--lora_path")
    p.add_argument("--prefix_path")
    p.add_argument(
        "--system",
        help="system prompt opening the conversation (written as --template writes one; "
        "kept when old turns are dropped)",
    )
    add_generation_flags(p)
    args = p.parse_args(argv)
    return run_main("chat.py", lambda: chat(args))
