"""notebooks/llm2vec_jax_colab_tpu.ipynb runs end to end on CPU with a tiny budget (parameters
injected papermill-style by replacing the `parameters` cell): MNTP, SimCSE on top, STS-B on
a slice for three encoders, and encoding a few sentences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "llm2vec_jax_colab_tpu.ipynb"
PARAMETERS = ("MODEL", "MNTP_STEPS", "SIMCSE_STEPS", "BATCH", "MAX_LEN", "OUT", "STS_DATA",
              "STS_LIMIT", "REPO_URL")


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def test_structure():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    source = parameters_cell(nb).source
    assigned = set(re.findall(r"(?m)^([A-Z_]+) = ", source))
    assert assigned == set(PARAMETERS)
    # Committed clean: no outputs, no execution counts (a Colab user starts from scratch).
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    # Each code cell follows an explanation.
    for before, cell in zip(nb.cells, nb.cells[1:]):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            assert before.cell_type == "markdown"


def test_runs_on_cpu_with_a_tiny_budget(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters_cell(nb).source = "\n".join([
        'MODEL = "smollm2"', "MNTP_STEPS = 2", "SIMCSE_STEPS = 2", "BATCH = 2", "MAX_LEN = 32",
        f"OUT = {str(tmp_path / 'out')!r}", 'STS_DATA = "sample:stsb-dev"', "STS_LIMIT = 32",
        'REPO_URL = "unused"'])
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()

    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.get("output_type") == "stream")
    assert "not on Colab: nothing to install" in text
    stages = ("mntp", "simcse")
    encoders = ["base (bidirectional, no training)", "+ MNTP", "+ MNTP + SimCSE"]
    for name in encoders:
        assert re.search(rf"(?m)^{re.escape(name)} +Spearman +-?\d", text), name
    assert "STS: 32 pairs from sample:stsb-dev" in text
    assert "(4, 576)" in text  # four sentences, SmolLM2-135M's hidden size
    for stage in stages:
        adapter = tmp_path / "out" / stage / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        assert (adapter / "llm2vec_config.json").is_file()
