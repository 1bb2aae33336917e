"""The step-wise decode engine: one decoder for predict, chat, deploy and serving (see decoder.py)."""

from .decoder import Sequence, StepEngine
from .settings import GenerationConfig

__all__ = ["GenerationConfig", "Sequence", "StepEngine"]
