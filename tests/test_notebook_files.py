"""The notebooks as committed: outputs cleared, a papermill parameters cell, and notebooks/README.md's figure
links in step with notebooks/figures (every link resolves, every figure is linked). Executing the notebooks is
nbmake's job (`pytest notebooks --nbmake`)."""
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
README = NOTEBOOKS / "README.md"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    dirty = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} carry outputs; clear them (see notebooks/README.md)"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in code), \
        f"{path.name} is a papermill output notebook (injected parameters)"


def _links():
    return re.findall(r"\]\((figures/[^)]+)\)", README.read_text(encoding="utf-8"))


def test_readme_figure_links_resolve():
    links = _links()
    assert links, "notebooks/README.md links no figure"
    missing = [link for link in links if not (NOTEBOOKS / link).is_file()]
    assert not missing, (f"notebooks/README.md links figures that do not exist: {missing}; run the notebook "
                         f"(it writes notebooks/figures/) and commit the figures")


def test_every_figure_is_linked():
    linked = {Path(link).name for link in _links()}
    stale = sorted(p.name for p in (NOTEBOOKS / "figures").glob("*.png") if p.name not in linked)
    assert not stale, f"notebooks/figures holds figures notebooks/README.md does not link (stale?): {stale}"
