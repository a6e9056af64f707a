"""User errors end a stage with one line, and the launcher repeats it as the last thing the user sees.

A bad data row, a missing model or an impossible setting is the user's to fix, so it must not arrive
as a traceback buried under torchrun's report, followed by "run the same command again to resume"
(which cannot help with bad data). A stage module runs under `run_stage`: a user error is printed
as `error: <file:line / key: what is wrong>`, written to `<stage folder>/error.txt` for the launcher,
and the stage exits with code 2. Anything else is a crash, with its traceback and the resume hint.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from pipeline.data.sources import DataError
from pipeline.run.config import ConfigError
from pipeline.run.folders import InputError
from pipeline.run.hub import HubInputError
from pipeline.train.checkpoint import CheckpointTopologyError, CheckpointWriteError
from pipeline.train.guards import NonFiniteError

# What resuming alone cannot fix: bad config, inputs or data, a run stopped on a NaN by request, and a
# checkpoint that could not be written (its message says which checkpoint to resume from once there is space),
# and one that cannot be resumed at this world size (its message says with how many processes it can).
USER_ERRORS = (
    ConfigError,
    InputError,
    HubInputError,
    DataError,
    NonFiniteError,
    CheckpointWriteError,
    CheckpointTopologyError,
)
ERROR_FILE = "error.txt"
STAGE_DIR_ENV = "R1_STAGE_DIR"  # set by the launcher: where a stage leaves its user error
USER_ERROR_EXIT = 2


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_stage(main: Callable[[Optional[list[str]]], int], argv: Optional[list[str]] = None) -> int:
    """Run a stage's `main`; a user error becomes one line on stderr and in error.txt (rank 0)."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        message = one_line(e)
        folder = os.environ.get(STAGE_DIR_ENV)
        if folder and os.environ.get("RANK", "0") == "0":
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / ERROR_FILE).write_text(message + "\n")
            except OSError:  # a full disk: the message still reaches stderr
                pass
        print(f"error: {message}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT


def take_error(folder: Path) -> Optional[str]:
    """The user error a stage left in `folder` (removed once read), or None."""
    path = folder / ERROR_FILE
    if not path.exists():
        return None
    message = path.read_text().strip()
    path.unlink()
    return message or None
