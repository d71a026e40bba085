"""Shared fixtures: tiny random Stable Diffusion models (CPU, no downloads)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # lets tests import `tests.helpers` and `studio` from any cwd
    sys.path.insert(0, str(ROOT))

from tests.helpers import tiny_pipeline  # noqa: E402
from tests.helpers import tiny_sd_components as _tiny_sd_components  # noqa: E402


@contextmanager
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_single_thread():
    """One torch intra-op thread for the test, restored afterwards.

    Tiny models gain nothing from two threads, and when another process holds a
    core the OpenMP threads stall at every barrier: the engine tests took 12 s
    single-threaded vs 220 s with two threads on a busy 2-core machine."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_sd_components():
    """The factory ``tiny_sd_components(family="sd1"|"sd2v") -> dict`` of pipeline components."""
    return _tiny_sd_components


@pytest.fixture(scope="session")
def tiny_pipelines():
    """``tiny_pipelines(family)`` -> a session-shared tiny ``StableDiffusionPipeline``."""
    built = {}

    def get(family: str = "sd1"):
        if family not in built:
            built[family] = tiny_pipeline(family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_models(tiny_pipelines):
    """``tiny_models(family)`` -> a session-shared :class:`studio.models.LoadedModel`.

    ``family`` is ``"sd1"`` or ``"sd2v"`` (random tiny models) or ``"tinyworld"``
    (the shipped assets on CPU; the test is skipped when they are absent)."""
    from studio.models import from_pipeline, load_model, repo_root

    built = {}

    def get(family: str = "sd1"):
        if family not in built:
            if family == "tinyworld":
                if not (repo_root() / "assets" / "tinyworld" / "model_index.json").is_file():
                    pytest.skip("Tiny World assets (assets/tinyworld) are not present")
                built[family] = load_model("tinyworld", device="cpu")
            else:
                built[family] = from_pipeline(tiny_pipelines(family), name=f"tiny-{family}")
        return built[family]

    return get


@pytest.fixture
def tiny_model(tiny_models):
    """The SD 1.x-shaped tiny model."""
    return tiny_models("sd1")


@pytest.fixture(scope="module")
def torch_single_thread_module():
    """Module-scoped :func:`torch_single_thread`, for module-scoped fixtures that run the model."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def default_model(torch_single_thread_module, tiny_models):
    """Tiny World when its assets are here (64x64, fast; shared by the session), else the tiny random SD model."""
    tinyworld = ROOT / "assets" / "tinyworld" / "model_index.json"
    return tiny_models("tinyworld" if tinyworld.is_file() else "sd1")
