"""Shared fixtures: every test runs with its own module registry and image cache."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point MIMIR_HOME and MIMIR_CACHE at fresh temporary folders."""
    root = tmp_path_factory.mktemp("mimir-dirs")
    monkeypatch.setenv("MIMIR_HOME", str(root / "home"))
    monkeypatch.setenv("MIMIR_CACHE", str(root / "cache"))
    monkeypatch.delenv("MIMIR_WEIGHTS_MIRROR", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tests share 2 cores with each other; one torch thread avoids oversubscription."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)
