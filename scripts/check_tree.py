"""Fail when git tracks a generated or binary file: nothing over 1 MB except the packaged data
(fedkron/data/packaged/), and no wheels, archives, model weights or pickles anywhere.

    python scripts/check_tree.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1_000_000  # bytes
PACKAGED = "fedkron/data/packaged/"
BINARY_SUFFIXES = (".whl", ".tar.gz", ".zip", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".safetensors", ".gguf", ".so")


def problems(paths: list[str]) -> list[str]:
    found = []
    for path in paths:
        size = (ROOT / path).stat().st_size if (ROOT / path).is_file() else 0
        if size > LIMIT and not path.startswith(PACKAGED):
            found.append(f"{path}: {size:,} bytes (over {LIMIT:,}; only {PACKAGED} may hold larger files)")
        if path.endswith(BINARY_SUFFIXES):
            found.append(f"{path}: a generated or binary file ({path.rsplit('.', 1)[-1]}) does not belong in git")
    return found


def main() -> int:
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    found = problems([p for p in tracked.decode().split("\0") if p])
    for line in found:
        print(f"check_tree: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
