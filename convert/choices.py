"""What the converter's options choose from, by name: a leaf module (no numpy, no TensorFlow, nothing of ours above
edgecls.errors), so that the options, the command line's choices and the modules that act on a choice share one list.
The architectures and int8 methods are registries of their own (.models, .int8methods)."""

COLORS = ("rgb", "grayscale")
TARGETS = ("cpu", "edgetpu", "imx500")
QUANT_MODES = ("int8", "float16", "dynamic", "none")
IO_TYPES = ("int8", "uint8")
OPTIMIZERS = ("adam", "sgd")
FLIPS = ("auto", "on", "off")
STRATEGIES = ("default", "mirrored", "multi-worker")
