from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_classify_folder_example(coral, tmp_path):
    for name in ("cat.bmp", "hot_dog.jpg"):
        shutil.copy(coral / name, tmp_path / name)
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "classify_folder.py"),
         str(coral / "mobilenet_v2_1.0_224_quant.tflite"), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1  Egyptian cat" in proc.stdout and "1  hotdog, hot dog, red hot" in proc.stdout
    assert "skipped:" in proc.stderr and "broken.jpg" in proc.stderr
