"""python deploy/serve.py --model_dir inference/ --model_prefix bloom \\
    [--host 127.0.0.1 --port 8080 --max_batch_size 8 --max_concurrent 32]

Serves an exported generation program (export/export_generation_model.py) over HTTP:
OpenAI-compatible POST /v1/completions and /v1/chat/completions (`"stream": true` for server-sent
events), GET /health, GET /v1/models, and a chat page at /. Loopback only unless --host says
otherwise; there is no authentication, so only expose it behind something that adds it.
"""

import argparse
import ipaddress
import os
import signal
import sys
import threading

from ..cli import run_main
from ..data.templates import TEMPLATES, get_template
from ..deploy.predictor import PRECISIONS, GenerationPredictor
from ..runtime import quiet
from ..tokenizer import BloomTokenizer
from ..workarounds import prefer_avx2_mkl_on_amd
from . import api
from .engine import Engine
from .server import App, Server


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Serve an exported BLOOM generation program over an OpenAI-compatible HTTP API with a chat page."
    )
    p.add_argument("--model_dir", required=True)
    p.add_argument("--model_prefix", default="bloom")
    p.add_argument("--model_name", help="the id clients send as 'model' (default: the model directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8080, help="0: any free port (the chosen one is printed)")
    p.add_argument(
        "--template", default="belle", choices=sorted(TEMPLATES), help="chat prompt template the model was trained with"
    )
    p.add_argument(
        "--max_batch_size", type=int, default=8, help="requests decoded together (each holds a KV-cache slot)"
    )
    p.add_argument("--max_concurrent", type=int, default=32, help="requests running or queued; more get HTTP 429")
    p.add_argument(
        "--chunk_tokens",
        type=int,
        default=1,
        help="new tokens per streamed event (every step decodes one token per request)",
    )
    p.add_argument(
        "--batch_wait_ms",
        type=float,
        default=10.0,
        help="when idle, how long the first request waits for others to share its batch",
    )
    p.add_argument("--max_new_tokens", type=int, default=512, help="the largest max_tokens a request may ask for")
    p.add_argument(
        "--max_prompt_tokens",
        type=int,
        default=1024,
        help="longer prompts get HTTP 400 (chat drops its oldest turns first)",
    )
    p.add_argument("--max_body_bytes", type=int, default=1 << 20)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--cpu_threads", type=int, default=0, help="0: all cores")
    p.add_argument("--enable_mkldnn", action="store_true")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--access_log", action="store_true", help="one stderr line per request")
    return p.parse_args(argv)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build(args):
    """The server, not yet serving (tests and the bench start it in a thread)."""
    for name in ("max_new_tokens", "max_prompt_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be >= 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be in 0..65535")
    template = get_template(args.template)
    predictor = GenerationPredictor.from_flags(args, max_batch_size=args.max_batch_size)
    tokenizer = BloomTokenizer.from_pretrained(args.model_dir)
    engine = Engine(
        predictor,
        args.max_batch_size,
        args.max_concurrent,
        args.chunk_tokens,
        args.batch_wait_ms,
        max_context=args.max_prompt_tokens + args.max_new_tokens,
    )
    limits = api.Limits(
        args.max_prompt_tokens,
        args.max_new_tokens,
        predictor.generation_config,
        vocab_size=int(predictor.info.get("vocab_size", tokenizer.vocab_size)),
        max_choices=args.max_concurrent,
    )
    name = args.model_name or os.path.basename(os.path.normpath(args.model_dir)) or args.model_prefix
    app = App(engine, tokenizer, template, limits, name, args.max_body_bytes, args.access_log)
    try:
        return Server((args.host, args.port), app, max_connections=4 * args.max_concurrent + 16)
    except OSError as e:
        engine.close()
        raise ValueError(f"--host {args.host} --port {args.port}: cannot listen there ({e.strerror or e})") from None


def serve(args) -> None:
    server = build(args)
    host, port = server.server_address[:2]
    if not _is_loopback(args.host):
        print(
            f"serve.py: warning: listening on {host}, reachable from other machines; the API has no authentication",
            file=sys.stderr,
        )
    # SIGTERM (docker stop, systemd) ends like Ctrl-C: stop accepting, let the scheduler finish its call.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"serving {server.app.model_name} on http://{host}:{port}/ (chat page at /, API at /v1)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        server.app.engine.close()


def main(argv=None) -> int:
    quiet()
    prefer_avx2_mkl_on_amd()  # before the predictor's first MKL routine
    args = parse_args(argv)
    return run_main("serve.py", lambda: serve(args))
