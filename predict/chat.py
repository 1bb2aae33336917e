"""Chat with a BLOOM checkpoint: python predict/chat.py --model_name_or_path CKPT [sampling flags]"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paddlebloom.chat import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
