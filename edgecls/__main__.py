"""``python -m edgecls`` and the ``edgecls`` console script: the command line.

A Ctrl-C while the command line is still starting is exit 130 with one line, like one later on. Python raises
KeyboardInterrupt wherever the main thread happens to be, and in the middle of an import that leaves half-made modules:
a library turns it into an ImportError (numpy: "you should not try to import numpy from its source directory"), the
import machinery prints "Exception ignored" and swallows it (the Ctrl-C is lost), or a class body being built lets it
through with the interpreter's exit status forced to -SIGINT (CPython marks a KeyboardInterrupt that leaves any
``exec``/``eval`` of a string, as dataclasses and annotation evaluation do, as unhandled, even when it is caught
later). So, from here on, a SIGINT that lands inside an import or such an ``exec`` waits for it to finish: it is sent
again a moment later, and raised where the program can handle it.

A SIGINT that was ignored when the process started stays ignored: neither this module nor `run` (edgecls.cli.run)
installs a handler for it. A non-interactive shell starts `cmd &` that way, so that a Ctrl-C at the terminal is not
for it; such a run stops on SIGTERM (docs/device.md, "Stopping").
"""

import os
import signal
import sys
import threading
from types import FrameType

_RETRY_S = 0.02  # how soon a SIGINT that arrived inside an import is sent again


def _at_a_bad_moment(frame: FrameType | None) -> bool:
    """Whether the main thread is, below ``console``, in the import machinery or in code made by exec/eval of a
    string (``python -c`` code that calls ``console`` is below it, not inside it)."""
    while frame is not None and frame.f_code is not console.__code__:
        name = frame.f_code.co_filename
        if name == "<string>" or name.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    if _at_a_bad_moment(frame):
        timer = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


def console() -> None:
    # Python installs default_int_handler only where SIGINT was not ignored at start; an ignored one stays so
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        from edgecls.cli.app import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    console()
