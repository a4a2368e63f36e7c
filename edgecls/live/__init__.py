"""Frames over time: sources, capture, the stream and its smoothing."""
