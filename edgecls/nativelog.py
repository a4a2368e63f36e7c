"""Holding back the routine chatter native runtimes (LiteRT, TensorFlow) print straight to file descriptor 2.

Python's sys.stderr cannot catch those lines. `quiet_native_stderr` points fd 2 at a temporary file for a short,
known-noisy call, then replays every line that is not routine noise, so nothing real is ever lost.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

ROUTINE_NOISE = re.compile(
    r"^(INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I0000 .*(oneDNN custom operations are on|cpu_feature_guard).*"
    r"|fully_quantize: \d+, inference_type: .*"
    r"|W0000 .*(tf_tfl_flatbuffer_helpers|Ignored output_format|Ignored drop_control_dependency).*)$"
)


@contextmanager
def quiet_native_stderr(*, replay: bool = True) -> Iterator[list[str]]:
    """Drop the routine native log lines printed during the block and replay any other line unchanged.

    With ``replay=False`` nothing is printed; the non-routine lines are left in the yielded list (filled when the
    block ends) for the caller to log, e.g. when the same details already travel in an exception.
    """
    kept: list[str] = []
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2: nothing to filter
        yield kept
        return
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept.extend(
                line
                for line in held.read().decode("utf-8", "replace").splitlines()
                if not ROUTINE_NOISE.match(line.strip())
            )
            if replay:
                for line in kept:
                    print(line, file=sys.stderr)
