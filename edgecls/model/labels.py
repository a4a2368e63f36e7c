"""Class labels: parse label files, find them for a model, and fit them to the model's outputs.

Sources, first found wins: an explicit file or list; the edgecls manifest embedded in the model; the label file in
the model's TFLite metadata (the zip appended to the flatbuffer); a ``labels.txt`` next to the model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgecls.errors import LabelsError
from edgecls.model.metadata import ModelFileInfo

_ID_LINE = re.compile(r"^\s*(\d+)(?:\s*[:,]\s*|\s+)(\S.*?)\s*$")
IMAGENET_WITH_BACKGROUND = 1001


@dataclass(frozen=True)
class Labels:
    """Labels fitted to a model: ``names[i]`` is the label of output ``i``; ``source`` says where they came from."""

    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]


def parse_labels(text: str, *, origin: str = "labels") -> list[str] | dict[int, str]:
    """Parse label text: one label a line, or Coral's ``id label`` lines (returned as a dict).

    >>> parse_labels("cat\\ndog\\n")
    ['cat', 'dog']
    >>> parse_labels("0 background\\n1 cat\\n")
    {0: 'background', 1: 'cat'}
    """
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsError(f"{origin} holds no labels: expected one label a line, or 'id label' lines")
    matches = [_ID_LINE.match(line) for line in lines if line]
    if all(matches) and len(matches) == len(lines):
        mapping = {int(m.group(1)): m.group(2) for m in matches if m}
        if len(mapping) == len(matches):
            return mapping
    return lines


def format_labels(names: Sequence[str]) -> str:
    """Label-file text that `parse_labels` reads back as exactly ``names``: one label a line, or, where names would
    be read as ``id label`` lines (class folders ``1 apple``, ``2 banana``) or lose spaces, explicit ``id label``
    lines ("0 1 apple"). A name with a line break cannot be written; LabelsError says so."""
    names = [str(n) for n in names]
    bad = [n for n in names if any(c in n for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029") or not n.strip()]
    if bad:
        raise LabelsError(f"label {bad[0]!r} is empty or holds a line break; rename that class folder")
    plain = "\n".join(names) + "\n"
    if parse_labels(plain) == names:
        return plain
    text = "".join(f"{i} {n}\n" for i, n in enumerate(names))
    if parse_labels(text) != dict(enumerate(names)):
        raise LabelsError(
            f"labels {names[:3]}... cannot be written so they read back unchanged (leading or trailing "
            "spaces?); rename the class folders"
        )
    return text


def read_labels_file(path: str | os.PathLike[str]) -> list[str] | dict[int, str]:
    """Read and parse a label file, with a clear error when it is missing or not text."""
    import stat

    from edgecls.fsutil import os_reason

    p = Path(path)
    try:
        st = os.stat(p)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):  # a FIFO would block
            raise LabelsError(f"label file {p} is not a regular file; expected UTF-8 text, one label a line")
        if st.st_size > 64 << 20:
            raise LabelsError(f"label file {p} is over 64 MB; expected UTF-8 text, one label a line")
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelsError(f"label file not found: {p}") from None
    except UnicodeDecodeError:
        raise LabelsError(f"cannot read label file {p}: it is not UTF-8 text; expected one label a line") from None
    except OSError as exc:  # a directory, permission denied, a symlink loop
        raise LabelsError(
            f"cannot read label file {p} ({os_reason(exc)}); expected UTF-8 text, one label a line"
        ) from None
    return parse_labels(text, origin=str(p))


def fit_labels(raw: Sequence[str] | dict[int, str], num_classes: int, *, source: str) -> Labels:
    """Fit parsed labels to ``num_classes`` outputs, or raise LabelsError saying how they differ.

    Accepts the ImageNet convention: 1000 labels for a 1001-output model gain a leading ``background``, and
    1001 labels starting with ``background`` for a 1000-output model lose it.
    """
    if isinstance(raw, dict):
        if raw and max(raw) >= num_classes:
            raise LabelsError(
                f"labels from {source} use id {max(raw)} but the model has {num_classes} classes (ids 0..{num_classes - 1}); "
                "pass the label file made for this model with --labels"
            )
        names = [raw.get(i, str(i)) for i in range(num_classes)]
        return Labels(tuple(names), source)
    names = list(raw)
    if len(names) == num_classes:
        return Labels(tuple(names), source)
    if num_classes == IMAGENET_WITH_BACKGROUND and len(names) == num_classes - 1:
        return Labels(("background", *names), source)
    if len(names) == num_classes + 1 == IMAGENET_WITH_BACKGROUND and names[0].lower() == "background":
        return Labels(tuple(names[1:]), source)
    raise LabelsError(
        f"labels from {source} have {len(names)} entries but the model has {num_classes} classes; "
        "pass the label file made for this model with --labels"
    )


def find_labels(
    info: ModelFileInfo,
    num_classes: int,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
) -> Labels | None:
    """Find the labels for a model, first found wins (see module doc). None when the model has none anywhere."""
    if labels is not None:
        if isinstance(labels, (str, os.PathLike)):
            return fit_labels(read_labels_file(labels), num_classes, source=str(labels))
        return fit_labels(list(labels), num_classes, source="labels argument")
    if info.manifest and info.manifest.get("labels"):
        return fit_labels(list(info.manifest["labels"]), num_classes, source="edgecls manifest")
    metadata_labels = _metadata_label_file(info, num_classes)
    if metadata_labels is not None:
        return metadata_labels
    sidecar = info.path.with_name("labels.txt")
    if sidecar.is_file():
        return fit_labels(read_labels_file(sidecar), num_classes, source=str(sidecar))
    return None


def labels_for_file(info: ModelFileInfo, labels: str | os.PathLike[str] | None = None) -> Labels | None:
    """The labels of a model read without an interpreter (e.g. an Edge TPU build no CPU can run): from the file,
    or from the CPU model beside an ``*_edgetpu.tflite`` (the compiler drops appended files)."""
    from edgecls.model.flatbuffer import read_graph
    from edgecls.model.metadata import check_model_file, cpu_sibling
    from edgecls.model.postprocess import OutputSpec

    graph = read_graph(info.path)
    output = graph.tensors[graph.outputs[0]]
    classes = OutputSpec(output.size, output.dtype).num_classes
    found = find_labels(info, classes, labels)
    cpu = cpu_sibling(info.path)
    if found is None and cpu is not None:
        found = find_labels(check_model_file(cpu), classes)
    return found


def _metadata_label_file(info: ModelFileInfo, num_classes: int) -> Labels | None:
    candidates = [name for name in info.associated_files if name.lower().endswith(".txt")]
    candidates.sort(key=lambda name: ("label" not in name.lower(), name))
    first_error: LabelsError | None = None
    for name in candidates:
        source = f"TFLite metadata ({name})"
        try:
            text = info.associated_files[name].decode("utf-8-sig")
            return fit_labels(parse_labels(text, origin=source), num_classes, source=source)
        except UnicodeDecodeError:
            continue
        except LabelsError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return None
