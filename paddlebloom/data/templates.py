"""Prompt templates: how a conversation becomes prompt text.

A template renders each user turn (`prompt`, containing {q}); the response follows it and ends
with EOS. The conversation opens with the system prompt written as `system` ({s}), or with
`default_system` when there is none. The opening belongs to the first turn that is kept, so it
survives when old turns are dropped to fit a context.

    belle   "{system}\n\n" + "Human: \n{q}\n\nAssistant: \n"             (no default system prompt)
    alpaca  "{system}\n\n" + "### Instruction:\n{q}\n\n### Response:\n"  (default: Alpaca's preamble,
            so a system prompt replaces "Below is an instruction that describes a task...")
    plain   "{system}\n\n" + "{q}"                                        (PaddleNLP's example: the source as it is)
"""

from dataclasses import dataclass
from typing import Optional

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
)


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str  # one user turn; contains {q}
    system: str = "{s}\n\n"  # how a system prompt opens the conversation; contains {s}
    default_system: str = ""  # what opens it when there is no system prompt

    def opening(self, system: Optional[str] = None) -> str:
        return self.system.format(s=system) if system else self.default_system

    def render(self, query: str, system: Optional[str] = None, first: bool = True) -> str:
        """Prompt text of one user turn; the turn that starts the conversation (`first`) carries the opening."""
        return (self.opening(system) if first else "") + self.prompt.format(q=query)


TEMPLATES = {
    # BELLE / bloom_tuning's template.
    "belle": Template("belle", "Human: \n{q}\n\nAssistant: \n"),
    # Stanford Alpaca's instruction template; its preamble is the default system prompt.
    "alpaca": Template("alpaca", "### Instruction:\n{q}\n\n### Response:\n", default_system=ALPACA_PREAMBLE),
    # PaddleNLP's BLOOM example: the source text as it is, the target right after it.
    "plain": Template("plain", "{q}"),
}
DEFAULT_TEMPLATE = TEMPLATES["belle"]


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown --template {name!r}; choose from {', '.join(TEMPLATES)}")
    return TEMPLATES[name]
