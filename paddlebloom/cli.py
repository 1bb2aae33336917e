"""How every script starts and ends: upstream import noise filtered, a user error reported in one
line on stderr with exit status 2 and no traceback. Kept free of Paddle (light tools import it).
"""

import os
import sys
import traceback
import warnings

from .data.readers import DataError

# The errors this suite raises for bad input (flags, files, their contents), with messages that
# name the flag or file:line. Anything else is a bug: it keeps its traceback and exit status 1.
USER_ERRORS = (DataError, ValueError, FileNotFoundError)

# Upstream warnings that only bury the output users read, each matched by its message and the
# module that issues it, so our own warnings and new upstream deprecations still show.
# pytest.ini repeats this list for the tests.
UPSTREAM_NOISE = (
    # `import paddle` looks for ccache, which only speeds up compiling custom ops (ours build once)
    ("No ccache found", UserWarning, r"paddle\.utils\.cpp_extension"),
    # importing paddlenlp (hub downloads only) imports distutils and pydantic-v1 APIs
    ("Setuptools is replacing distutils", UserWarning, r"_distutils_hack"),
    ("", DeprecationWarning, r"paddlenlp\."),
)


def quiet_upstream_warnings() -> None:
    """Filter UPSTREAM_NOISE. The thin scripts call it before anything imports Paddle."""
    for message, category, module in UPSTREAM_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def run_main(program: str, body) -> int:
    try:
        body()
    except USER_ERRORS as e:
        if os.environ.get("PADDLEBLOOM_TRACEBACK"):
            traceback.print_exc()
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
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
