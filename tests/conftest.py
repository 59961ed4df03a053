"""Shared fixtures: Flower's process identity for building Messages outside a run, real data."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def flower_identity(monkeypatch):
    """Messages need a run id and node id; a real run sets them, unit tests set them here."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real task data (FEDKRON_DATA_DIR or ../shared/data); skip when absent."""
    env = os.environ.get("FEDKRON_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (path / "sst2" / "train.tsv").is_file():
        pytest.skip(f"real data not found at {path} (set FEDKRON_DATA_DIR to the shared data folder)")
    return path
