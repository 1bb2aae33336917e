"""Score answers with an LLM judge behind an OpenAI-compatible chat endpoint.

The rubric (`judge_rubric.txt`, in the package so a result is tied to the rubric that made it)
is filled with the category, question, reference and answer and sent as one user message with
temperature 0. The judge must reply with JSON `{"score": 0..1, "reason": ...}`; a reply we cannot
read, an HTTP error or a timeout (after retries) becomes an error on that answer, not a crash.
"""

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Optional

RUBRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge_rubric.txt")
_FIELDS = ("category", "question", "reference", "answer")


def load_rubric(path: str = RUBRIC_PATH) -> str:
    with open(path, encoding="utf-8") as f:
        rubric = f.read()
    missing = [name for name in _FIELDS if "{{" + name + "}}" not in rubric]
    if missing:
        raise ValueError(f"{path}:1: rubric lacks the placeholder(s) {', '.join('{{' + m + '}}' for m in missing)}")
    return rubric


def fill(rubric: str, **values: str) -> str:
    # Plain replacement, not str.format: rubrics and answers contain braces (JSON, code).
    for name in _FIELDS:
        rubric = rubric.replace("{{" + name + "}}", values[name])
    return rubric


def chat_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--judge_url {url!r} must start with http:// or https://")
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def parse_score(content: str) -> tuple:
    """(score in [0, 1], reason) from the judge's reply; ValueError when there is none."""
    found = re.search(r"\{.*\}", content, re.S)
    if found:
        try:
            reply = json.loads(found.group(0))
            score = float(reply["score"])
            reason = str(reply.get("reason", ""))
        except (ValueError, KeyError, TypeError):
            score = None
    else:
        score = None
    if score is None:  # some judges ignore the format: accept a plain "score: 0.8"
        plain = re.search(r"score\W{0,3}([01](?:\.\d+)?)", content, re.I)
        if not plain:
            raise ValueError(f"judge reply has no score: {content[:120]!r}")
        score, reason = float(plain.group(1)), content.strip()
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"judge score {score} is outside [0, 1]")
    return score, reason


@dataclass
class Verdict:
    score: Optional[float]
    reason: str = ""
    error: Optional[str] = None


class JudgeClient:
    def __init__(
        self,
        url: str,
        model: str,
        api_key: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 2,
        rubric_path: str = RUBRIC_PATH,
    ):
        self.url = chat_url(url)
        self.model, self.api_key, self.timeout, self.retries = model, api_key, timeout, max(0, retries)
        self.rubric = load_rubric(rubric_path)
        self.rubric_sha = hashlib.sha256(self.rubric.encode()).hexdigest()[:16]

    def _post(self, prompt: str) -> str:
        body = json.dumps(
            {"model": self.model, "temperature": 0, "messages": [{"role": "user", "content": prompt}]}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
        return reply["choices"][0]["message"]["content"]

    def judge(self, category: str, question: str, reference: str, answer: str) -> Verdict:
        prompt = fill(self.rubric, category=category, question=question, reference=reference, answer=answer)
        error = ""
        for attempt in range(self.retries + 1):
            try:
                score, reason = parse_score(self._post(prompt))
                return Verdict(score, reason)
            except urllib.error.HTTPError as e:
                error = f"HTTP {e.code} from {self.url}"
                if e.code < 500 and e.code != 429:  # a client error will not fix itself
                    break
            except (urllib.error.URLError, TimeoutError, OSError) as e:
                error = f"{self.url}: {getattr(e, 'reason', e)}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                error = f"unusable judge reply: {e}"
            if attempt < self.retries:
                time.sleep(min(4.0, 0.5 * 2**attempt))
        return Verdict(None, "", error)
