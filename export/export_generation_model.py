"""Thin entry point: see paddlebloom/export/cli.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
