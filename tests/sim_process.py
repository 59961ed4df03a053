"""`python -m fedkron sim ...` as a child process in its own session, for the tests that signal,
kill or resume a real simulation (test_resume.py, test_ray_lifecycle.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_sim(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fedkron", "sim", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )
