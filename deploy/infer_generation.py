"""Thin entry point: see paddlebloom/deploy/cli.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cli import quiet_upstream_warnings  # noqa: E402 - Paddle-free

quiet_upstream_warnings()  # before the imports below import Paddle, which warns as it loads
from paddlebloom.deploy.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
