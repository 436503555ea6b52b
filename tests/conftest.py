"""Shared test helpers: where the read-only reference material lives, and fixture discovery."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "reference"
METRO_WAV = SHARED / "data" / "metro_station-paris.wav"
LABELS_CSV = SHARED / "data" / "class_labels_indices.csv"


def fixture_files(*kinds: str) -> list[Path]:
    """Fixture files of the given kinds (read at collection time, so new files are picked up)."""
    if not FIXTURES.is_dir():
        return []
    files = []
    for path in sorted(FIXTURES.glob("*.pt")):
        if ".state_dict-" in path.name:
            continue
        if torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("kind") in kinds:
            files.append(path)
    return files


def load_fixture(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def float_state_dict(state_dict: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


requires_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (reference fixtures and data) not present")
