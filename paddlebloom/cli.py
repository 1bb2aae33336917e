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
    leave_together()
    return 0


def leave_together() -> None:
    """Under the launcher, ranks that succeeded leave at the same moment.

    A rank that tears down its collective group while another is still finishing its last
    collective can crash on exit: CI once saw rank 0 of a TP=2 evaluation write its results and
    then die with SIGSEGV, turning a correct run into a failed one. A rank that failed with a
    user error never gets here; the launcher then stops the others.
    """
    dist = sys.modules.get("paddle.distributed")  # never imported: no group to leave (and Paddle-free tools stay so)
    if dist is not None and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
