"""Drawing on frames with OpenCV (the annotated video file and the dashboard's video): the decision, the frame's
top prediction and the latency, on a BGR copy of a frame in any source colour order."""

from __future__ import annotations

import numpy as np

from edgecls.live.stream import StreamResult


def annotate(result: StreamResult) -> np.ndarray:
    """The result's frame as a BGR image with the decision, the top prediction and the latency drawn on it."""
    import cv2

    frame = to_bgr(result.frame, result.color)  # type: ignore[arg-type]
    d = result.decision
    lines = [f"{d.label if d.label is not None else '-'} {d.score:.2f}"]
    if result.top is not None and result.top.label != d.label:
        lines.append(f"frame: {result.top.label} {result.top.score:.2f}")
    lines.append(f"#{result.sequence}  {result.latency.total_ms:.1f} ms")
    scale = max(0.5, frame.shape[1] / 800)
    y = int(30 * scale)
    for text in lines:
        for color, thickness in (((0, 0, 0), 4), ((255, 255, 255), 1)):
            cv2.putText(
                frame,
                text,
                (10, y),
                cv2.FONT_HERSHEY_SIMPLEX,
                scale,
                color,
                max(1, int(thickness * scale)),
                cv2.LINE_AA,
            )
        y += int(30 * scale)
    return frame


def to_bgr(image: np.ndarray, color: str) -> np.ndarray:
    """A BGR copy of a frame delivered in ``color`` order (rgb, bgr, yuv420; 1, 3 or 4 channels)."""
    import cv2

    if color == "yuv420":
        return cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2BGR if color == "rgb" else cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if color == "rgb" else image.copy()
