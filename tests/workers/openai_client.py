"""Runs calls through the official `openai` Python client (in .venv-hf) and prints what it got.

    python openai_client.py BASE_URL '[{"endpoint": "completions"|"chat", "args": {...}}, ...]'

One JSON line out: per call {"body": ...} (non-streamed), {"chunks": [...]} (streamed) or
{"error": {"class", "status", "message"}}; the test checks them against the dynamic model.
"""

import json
import sys

import openai


def main(base: str, calls: list) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    out = []
    for call in calls:
        create = client.chat.completions.create if call["endpoint"] == "chat" else client.completions.create
        try:
            result = create(**call["args"])
            if call["args"].get("stream"):
                out.append({"chunks": [chunk.model_dump() for chunk in result]})
            else:
                out.append({"body": result.model_dump()})
        except openai.APIStatusError as e:
            out.append({"error": {"class": type(e).__name__, "status": e.status_code, "message": e.message}})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
