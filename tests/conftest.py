"""Shared fixtures: the reference material in ../shared, skipped with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("OSNET_SHARED_DIR", REPO_ROOT.parent / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference material not found at {path} (set OSNET_SHARED_DIR to ../shared)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED_DIR)


@pytest.fixture(scope="session")
def real_crops_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "data" / "real_crops")


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "data" / "reference")


@pytest.fixture(scope="session")
def shared_weights_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "weights")


@pytest.fixture(scope="session")
def seed_table(shared_dir: Path) -> Path:
    return _require(shared_dir / "data" / "seed_format" / "real_crops.csv")


@pytest.fixture(scope="module")
def module(shared_weights_dir: Path):
    """The trained osnet_x0_25 MSMT17 network (the bundled default's weights), once per test module."""
    from model import load_osnet

    return load_osnet(shared_weights_dir / "osnet_x0_25_msmt17.pth")
