"""Holding back the routine chatter native runtimes (LiteRT, TensorFlow) print straight to file descriptor 2.

Python's sys.stderr cannot catch those lines. `quiet_native_stderr` points fd 2 at a temporary file for a short,
known-noisy call, then replays every line that is not routine noise, so nothing real is ever lost. The command line
and the Python API (`edgecls.Classifier` building its interpreter) both use it, so neither prints LiteRT's
"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."; the lines it drops are logged at debug level
(``EDGECLS_LOG=debug``, or the ``edgecls.nativelog`` logger).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
ROUTINE_NOISE = re.compile(
    r"^(INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I0000 .*(oneDNN custom operations are on|cpu_feature_guard).*"
    r"|fully_quantize: \d+, inference_type: .*"
    r"|W0000 .*(tf_tfl_flatbuffer_helpers|Ignored output_format|Ignored drop_control_dependency).*)$"
)
# fd 2 is one per process: two threads swapping it at once would each restore the other's temporary file (and lose
# stderr for good). One block at a time; the same thread may nest them.
_FD2 = threading.RLock()


@contextmanager
def quiet_native_stderr(*, replay: bool = True) -> Iterator[list[str]]:
    """Drop the routine native log lines printed during the block and replay any other line unchanged.

    With ``replay=False`` nothing is printed; the non-routine lines are left in the yielded list (filled when the
    block ends) for the caller to log, e.g. when the same details already travel in an exception.
    """
    kept: list[str] = []
    with _FD2:
        _flush_stderr()
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
                _flush_stderr()
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                for line in held.read().decode("utf-8", "replace").splitlines():
                    if ROUTINE_NOISE.match(line.strip()):
                        log.debug("native: %s", line)
                    else:
                        kept.append(line)
                if replay and sys.stderr is not None:  # print(file=None) would write to stdout
                    for line in kept:
                        print(line, file=sys.stderr)


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no sys.stderr (pythonw), or a closed one
        pass
