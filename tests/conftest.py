import os
from pathlib import Path

import pytest

from posthoc_csra.paths import SHARED_ENV, shared_dir

#: The benchmark scripts' folder (scripts, not a package: tests load them by path).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """load(name) → a fresh module of ``benchmarks/<name>.py``, its ``main`` not run."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


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


@pytest.fixture
def small_csv_dataset(tmp_path):
    """make(n, n_classes) → a ``labels.csv`` of n solid-colour 8×8 PNGs with labels c0..c{n_classes-1}."""
    from PIL import Image

    def make(n: int, n_classes: int) -> Path:
        rows = ["image,labels"]
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 255 // max(1, n - 1), 0, 0)).save(tmp_path / f"{i}.png")
            rows.append(f"{i}.png,c{i % n_classes}")
        (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
        return tmp_path / "labels.csv"
    return make


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance (2 CPUs, on this machine) shared by every Ray test; its address.
    Missing Ray is a failure under CI=true (the dev extra installs it), else a skip."""
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Ray is not installed: pip install -e '.[dev]' (the dev extra includes ray)")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                       log_to_driver=False, configure_logging=False)
    yield context.address_info["address"]
    ray.shutdown()
