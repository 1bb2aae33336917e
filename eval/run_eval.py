"""Perplexity (WikiText) or LAMBADA cloze accuracy of a BLOOM checkpoint; see paddlebloom/evaluation/run_lm.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.evaluation.run_lm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
