"""One exception hierarchy for the whole project.

Every message says what was received, what was expected, and what to do about it, so the CLI can print it as a
single line and library users can show it as is.
"""

from __future__ import annotations

# Exit codes of the command line (docs/device.md lists them): 0 done; 1 an error (one "error:" line); 2 a usage
# error (Typer's); 3 the command ran and its verdict is negative: a failed parity gate (convert), a model that will
# not map to the accelerator (check), a latency over the budget (bench); 130 interrupted.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_VERDICT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class EdgeclsError(Exception):
    """Base class of every error edgecls raises on purpose."""


class ModelError(EdgeclsError):
    """The model file is missing, not a TFLite model, truncated, or fails when run."""


class NotAClassifierError(ModelError):
    """The model is a valid TFLite model but not an image classifier (segmentation, pose, detection, sequence);
    ``problem`` says what it looks like instead."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: not an image classifier: {problem}")
        self.problem = problem


class BackendError(EdgeclsError):
    """No usable TFLite interpreter backend (ai-edge-litert, tflite-runtime, tensorflow)."""


class DelegateError(EdgeclsError):
    """A hardware delegate (Edge TPU, external delegate library) could not be loaded."""


class LabelsError(EdgeclsError):
    """A label file is unreadable or does not fit the model's outputs."""


class ImageError(EdgeclsError):
    """An image file or array cannot be read or has an unsupported shape or type."""


class CameraError(EdgeclsError):
    """A camera or stream source cannot be opened or stopped delivering frames."""


class SinkError(EdgeclsError):
    """A result sink (file, MQTT broker, video, preview) cannot be opened or written."""


class DataError(EdgeclsError):
    """A training dataset is missing, empty or unusable."""


class ConfigError(EdgeclsError):
    """A configuration value (option, profile, manifest field) is invalid."""


class WriteError(EdgeclsError):
    """A file or folder cannot be written (permissions, a full disk, a read-only file system)."""


class ConversionError(EdgeclsError):
    """Training, quantisation or export on the host failed (e.g. an op that cannot be fully quantised)."""
