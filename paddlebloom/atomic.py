"""Writes that are complete or absent: a temporary sibling, renamed into place.

Kept free of Paddle so light tools (sampling a huge file) do not pay for importing it.
"""

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Callable, Optional

# What every directory this suite writes holds (a model, an adapter, an export, a token store):
# an existing directory with none of them is someone else's, and replacing it would delete it.
OUTPUT_MARKERS = ("config.json", "lora_config.json", "prefix_config.json", "export_info.json", "meta.json")


def check_replaceable(target: str) -> None:
    """Callers with slow work before writing check first, so the error comes before the work."""
    if (
        os.path.isdir(target)
        and os.listdir(target)
        and not any(os.path.exists(os.path.join(target, m)) for m in OUTPUT_MARKERS)
    ):
        raise ValueError(
            f"{os.path.abspath(target)} holds files this suite did not write; refusing to replace it (write to a new "
            "or empty directory)"
        )


@contextlib.contextmanager
def atomic_directory(target: str):
    """Yield a temporary sibling directory; on success it replaces `target` in one rename.
    Refuses (ValueError, before anything is written) to replace a non-empty directory that holds
    none of OUTPUT_MARKERS: `--output_path bloom` run in a project folder must not replace the folder."""
    check_replaceable(target)
    parent = os.path.dirname(os.path.abspath(target)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(target) + ".tmp-", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if os.path.exists(target):
            old = tmp + ".old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_output(text: str, path: Optional[str] = None) -> None:
    """A command's result: to `path` atomically (readers never see half a file), or to stdout."""
    if not path:
        sys.stdout.write(text)
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    write_file_atomic(path, write)


def write_file_atomic(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path) and rename the result over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
