"""Thin entry point: see paddlebloom/serving/cli.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.cpu import prefer_avx2_mkl_on_amd  # noqa: E402

prefer_avx2_mkl_on_amd()  # before Paddle loads: MKL reads it once
from paddlebloom.serving.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
