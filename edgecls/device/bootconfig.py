"""Idempotent edits of a Raspberry Pi boot configuration file (``/boot/firmware/config.txt``).

A device profile names the lines its board needs. `plan_edit` adds only the ones that are not already in effect
(an active line outside any conditional section such as ``[cm4]``), in one block between ``# >>> edgecls`` and
``# <<< edgecls`` markers under an ``[all]`` filter, so a line is never added twice and the block never lands under
another model's filter. `apply` writes the result atomically after a backup; ``needs_reboot`` is true only when a
line that was not in effect before was added.

This module uses the standard library only: the deploy bundle ships its source, and ``install.sh`` runs it with the
system's ``python3`` before (and without) the venv::

    python3 edgecls_bootconfig.py apply /boot/firmware/config.txt --profile rpi5 \
        --line camera_auto_detect=1 "detect the official camera modules"
    python3 edgecls_bootconfig.py remove /boot/firmware/config.txt

Exit codes of the command: 0 nothing to do, 10 changed and a reboot is needed, 11 changed (no reboot), 1 error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BEGIN = "# >>> edgecls"
END = "# <<< edgecls"
EXIT_REBOOT, EXIT_CHANGED = 10, 11


@dataclass(frozen=True)
class Edit:
    text: str  # the new file content
    added: tuple[str, ...]  # lines written into the block
    newly_effective: tuple[str, ...]  # lines that were not in effect before: these need a reboot
    already: tuple[str, ...]  # wanted lines the file already had in effect outside the block

    @property
    def needs_reboot(self) -> bool:
        return bool(self.newly_effective)


def _split_block(text: str) -> tuple[list[str], list[str]]:
    """(the file's lines without edgecls blocks, the active lines those blocks held)."""
    rest, held, inside = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            inside = True
            continue
        if inside and stripped.startswith(END):
            inside = False
            continue
        if inside:
            if stripped and not stripped.startswith(("#", "[")):
                held.append(stripped)
        else:
            rest.append(line)
    return rest, held


def effective_lines(lines: list[str]) -> set[str]:
    """The active lines that apply to every board: before any section filter, or under ``[all]``/``[none]``-free
    ``[all]`` sections. Lines under a model or other filter (``[cm4]``, ``[pi5]``, ``[edid=...]``) are not counted."""
    found, unconditional = set(), True
    for line in lines:
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            unconditional = stripped.lower() == "[all]"
            continue
        if unconditional:
            found.add(stripped)
    return found


def _check_line(line: str) -> str:
    if not line.strip() or any(ord(c) < 32 or ord(c) == 127 for c in line) or line.strip().startswith(("#", "[")):
        raise ValueError(f"not a boot configuration line: {line!r}")
    return line.strip()


def plan_edit(text: str, lines: list[tuple[str, str]], *, profile: str) -> Edit:
    """The edit that puts ``lines`` ((line, comment) pairs) in effect in the file ``text``."""
    rest, held = _split_block(text)
    present = effective_lines(rest)
    wanted = [(_check_line(line), comment) for line, comment in lines]
    missing = [(line, comment) for line, comment in wanted if line not in present]
    new_lines = list(rest)
    if missing:
        while new_lines and not new_lines[-1].strip():
            new_lines.pop()
        new_lines += ["", f"{BEGIN} {profile} (install.sh --uninstall removes this block)", "[all]"]
        for line, comment in missing:
            new_lines += [f"# {' '.join(comment.split())}", line]
        new_lines.append(END)
    new_text = "\n".join(new_lines) + "\n" if new_lines else ""
    if new_text.strip() == text.strip():
        new_text = text
    newly = tuple(line for line, _ in missing if line not in held)
    return Edit(
        new_text, tuple(line for line, _ in missing), newly, tuple(line for line, _ in wanted if line in present)
    )


def plan_removal(text: str) -> Edit:
    """The edit that takes the edgecls block out again."""
    rest, held = _split_block(text)
    new_text = text if not held and BEGIN not in text else "\n".join(rest).rstrip("\n") + "\n"
    return Edit(new_text, (), (), ())


def write_atomically(path: Path, text: str, *, backup: bool = True) -> None:
    """Replace ``path`` with ``text`` (a temporary file in the same folder, then a rename), keeping its mode."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    if backup and path.exists():
        _replace(path.with_name(path.name + ".edgecls-backup"), path.read_bytes(), mode)
    _replace(path, text.encode("utf-8"), mode)


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecls_bootconfig", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("apply", "remove"))
    parser.add_argument("file", type=Path)
    parser.add_argument("--profile", default="edgecls")
    parser.add_argument(
        "--line",
        action="append",
        nargs=2,
        default=[],
        metavar=("LINE", "COMMENT"),
        help="a line the board needs and the comment that says why (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"boot config: cannot read {args.file} ({exc})", file=sys.stderr)
        return 1
    try:
        if args.action == "apply":
            edit = plan_edit(
                text, [(line, comment or "needed by edgecls") for line, comment in args.line], profile=args.profile
            )
        else:
            edit = plan_removal(text)
    except ValueError as exc:
        print(f"boot config: {exc}", file=sys.stderr)
        return 1
    for line in edit.already:
        print(f"boot config: {line} is already in {args.file}")
    if edit.text == text:
        print(f"boot config: {args.file} needs no change")
        return 0
    for line in edit.added:
        print(f"boot config: {'would add' if args.dry_run else 'adding'} {line} under [all] in {args.file}")
    if args.action == "remove":
        print(f"boot config: {'would remove' if args.dry_run else 'removing'} the edgecls block from {args.file}")
    if not args.dry_run:
        try:
            write_atomically(args.file, edit.text)
        except OSError as exc:
            print(f"boot config: cannot write {args.file} ({exc})", file=sys.stderr)
            return 1
        print(f"boot config: the previous file is {args.file}.edgecls-backup")
    return EXIT_REBOOT if edit.needs_reboot else EXIT_CHANGED


if __name__ == "__main__":
    sys.exit(main())
