"""Instruction evaluation (BELLE eval set) with an optional LLM judge; see paddlebloom/evaluation/instruct.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.evaluation.instruct import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
