"""How every script reports a user error: one line on stderr, exit status 2, no traceback."""
import os
import sys
import traceback

from .data.readers import DataError

USER_ERRORS = (DataError, ValueError, FileNotFoundError, KeyError)


def run_main(program: str, body) -> int:
    try:
        body()
    except USER_ERRORS as e:
        if os.environ.get("PADDLEBLOOM_TRACEBACK"):
            traceback.print_exc()
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
        message = str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__
        print(f"{program}: error: {message}", file=sys.stderr)
        return 2
    return 0
