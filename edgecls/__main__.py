"""``python -m edgecls`` and the ``edgecls`` console script: the command line. A Ctrl-C while the command line is
still being imported is exit 130 with one line, like one later on."""

import sys


def console() -> None:
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    console()
