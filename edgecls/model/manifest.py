"""Writing the edgecls manifest (and a plain ``labels.txt`` for other tools) into a TFLite model's bytes.

Reading it is `edgecls.model.metadata`'s job; this sits above both metadata and labels so neither imports the other.
"""

from __future__ import annotations

import json
from typing import Any

from edgecls.model.labels import format_labels
from edgecls.model.metadata import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, embed_files


def embed_manifest(model: bytes, manifest: dict[str, Any], *, labels: list[str] | None = None) -> bytes:
    """``model`` with ``manifest`` embedded as TFLite metadata; with ``labels``, also the label list in the manifest
    and a ``labels.txt`` that `edgecls.model.labels.parse_labels` reads back unchanged."""
    body = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **manifest}
    files: dict[str, bytes] = {}
    if labels is not None:
        body["labels"] = list(labels)
        files["labels.txt"] = format_labels(labels).encode("utf-8")
    files = {MANIFEST_NAME: json.dumps(body, indent=2, sort_keys=True).encode("utf-8"), **files}
    return embed_files(model, files)
