"""Perplexity (WikiText) or LAMBADA cloze accuracy of a BLOOM checkpoint; see paddlebloom/evaluation/run_lm.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cli import quiet_upstream_warnings  # noqa: E402 - Paddle-free

quiet_upstream_warnings()  # before the imports below import Paddle, which warns as it loads
from paddlebloom.evaluation.run_lm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
