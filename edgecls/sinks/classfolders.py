"""Class names as folder names, both ways: the one mapping `edgecls run --collect` writes class folders with and
`edgecls convert --extra-data` reads them back with.

A class name is not always a usable folder name: it may hold a ``/``, be ``..``, start with a dot (a hidden folder,
which convert ignores), hold control characters, or be longer than a file name may be (255 bytes on most file
systems, fewer on some). `folder_name` keeps a name as it is where it can and otherwise:

- writes each unsafe character as ``%XX`` escapes of its UTF-8 bytes, as URLs do: ``% / \\ : * ? " < > |``, control
  and format characters, a leading dot, a trailing dot or space, the first letter of a Windows device name (``CON``);
  ``%`` itself is escaped, so the escaping is reversible and two names never give the same folder;
- adds ``%~`` and a short hash of the whole name when the folder name had to be cut (at `MAX_BYTES` bytes of UTF-8,
  never inside a character) or when the name holds letters that a case-insensitive file system (macOS, Windows, a
  FAT memory card) would confuse with another name's (``Cat`` and ``cat``); ``%~`` never comes out of escaping;
- gives frames without any label `UNLABELLED` (``%unlabelled``), which is no class's folder.

`class_of_folder` reads a folder name back against the classes of the data: a folder named exactly as a class (the
way a person names one) is that class; otherwise the escapes are decoded and, for a cut or hashed name, the hash
picks the class. Neither function touches the file system, and neither imports more than the standard library.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from edgecls.errors import DataError

MAX_BYTES = 128  # a folder name's length in UTF-8 bytes: under the 143 of eCryptfs, well under the usual 255
UNLABELLED = "%unlabelled"
HASH_MARK = "%~"
_HASH_HEX = 10
_ESCAPED = set('%/\\:*?"<>|')
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}  # control, format, surrogate, unassigned, line breaks
_DEVICE_NAMES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def folder_name(label: str | None) -> str:
    """The class folder for ``label`` (see the module docstring); ``None`` gives `UNLABELLED`."""
    if label is None:
        return UNLABELLED
    pieces = [_escape(c) if _unsafe(c) else c for c in label]
    if pieces and (label[0] == "." or label.split(".")[0].upper() in _DEVICE_NAMES):
        pieces[0] = _escape(label[0])
    if pieces and label[-1] in ". ":
        pieces[-1] = _escape(label[-1])
    name = "".join(pieces)
    if label and len(name.encode()) <= MAX_BYTES and _folded(label) == label:
        return name
    room, kept = MAX_BYTES - len(HASH_MARK) - _HASH_HEX, []
    for piece in pieces:
        room -= len(piece.encode())
        if room < 0:
            break
        kept.append(piece)
    return "".join(kept) + HASH_MARK + _digest(label)


def class_of_folder(folder: str, classes: Sequence[str]) -> str | None:
    """The class of ``classes`` that a folder named ``folder`` holds, or None: a folder named as a class is that class
    (a person's folder), else one `folder_name` wrote for it (decoded; the Unicode normal form a copy through macOS
    may change does not matter). A folder that is one class by its name and another as `folder_name` writes it
    (classes ``a:b`` and ``a%3Ab``) is a DataError that says how to rename it."""
    plain = folder if folder in classes and folder != UNLABELLED else None
    mapped = _mapped(folder, classes)
    if plain is not None and mapped is not None and mapped != plain:
        raise DataError(
            f"the folder {folder!r} is the class {plain!r} by its name but the class {mapped!r} as "
            f"edgecls run --collect names folders; rename it to {folder_name(plain)!r} or "
            f"{folder_name(mapped)!r}"
        )
    return plain if plain is not None else mapped


def _mapped(folder: str, classes: Sequence[str]) -> str | None:
    """The class whose `folder_name` ``folder`` is (up to case and normal form where a hash tells them apart)."""
    prefix, mark, digest = folder.rpartition(HASH_MARK) if HASH_MARK in folder else (folder, "", "")
    decoded = _unescape(prefix)
    if decoded is None:
        return None
    if mark:
        start = _folded(decoded)
        found = [c for c in classes if _folded(c).startswith(start) and _digest(c) == digest.lower()]
    else:
        nfc = unicodedata.normalize("NFC", decoded)
        found = [c for c in classes if unicodedata.normalize("NFC", c) == nfc]
    exact = [c for c in found if c == decoded]
    return found[0] if len(found) == 1 else (exact[0] if exact else None)


def _unsafe(char: str) -> bool:
    return char in _ESCAPED or unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape(char: str) -> str:
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def _unescape(name: str) -> str | None:
    """Percent-decoding that refuses what `folder_name` never writes (a ``%`` without two hex digits)."""
    out, i = bytearray(), 0
    while i < len(name):
        if name[i] != "%":
            out += name[i].encode("utf-8", "surrogatepass")
            i += 1
            continue
        pair = name[i + 1 : i + 3]
        if len(pair) != 2 or any(c not in "0123456789abcdefABCDEF" for c in pair):
            return None
        out.append(int(pair, 16))
        i += 3
    try:
        return out.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


@lru_cache(maxsize=8192)
def _folded(text: str) -> str:
    """What a case- and normalisation-insensitive file system compares."""
    return unicodedata.normalize("NFC", text.casefold())


@lru_cache(maxsize=8192)
def _digest(label: str) -> str:
    return hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
