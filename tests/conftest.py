"""Shared fixtures: the real-data folder and small datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_path() -> Path | None:
    """``$JAXBOUND_DATA_DIR`` or ``../shared/data`` beside the repository, if it exists."""
    env = os.environ.get("JAXBOUND_DATA_DIR")
    cands = [Path(env)] if env else []
    cands.append(REPO.parent / "shared" / "data")
    for c in cands:
        if (c / "mnist").is_dir() or (c / "fashion-mnist").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Folder holding ``mnist/`` and ``fashion-mnist/`` IDX files; skips the test when absent."""
    path = shared_data_path()
    if path is None:
        pytest.skip("real MNIST/Fashion-MNIST IDX files not found: set JAXBOUND_DATA_DIR or place them in ../shared/data")
    return path


@pytest.fixture(scope="session")
def mnist_train(shared_data_dir):
    from jaxbound import data

    return data.load("mnist", split="train", data_dir=shared_data_dir)


@pytest.fixture(scope="session")
def mnist_test(shared_data_dir):
    from jaxbound import data

    return data.load("mnist", split="test", data_dir=shared_data_dir)


@pytest.fixture(scope="session")
def digits_train():
    from jaxbound import data

    return data.load("digits", split="train")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
