import os
from pathlib import Path

import pytest

from posthoc_csra.config import SHARED_ENV, shared_dir


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real assets folder. Missing under CI=true is a failure, never a skip."""
    path = shared_dir()
    if path is None or not (path / "weights" / "manifest.json").is_file():
        msg = (f"real assets not found: set {SHARED_ENV} to the shared/ folder "
               f"(with weights/manifest.json and data/)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def photos(shared) -> Path:
    return shared / "data" / "photos"


@pytest.fixture(scope="session")
def lite0_weights(shared) -> Path:
    return shared / "weights" / "tf_efficientnet_lite0.safetensors"
