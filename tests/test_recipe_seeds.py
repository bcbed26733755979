"""``bench/recipe_seeds.py`` without training: each seed's recipe is the shipped one with
every stage's seed and the output directory set, cut by ``--stages`` as the train command
cuts it; a cut that leaves a stage without the adapter it trains on is refused."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import recipe_seeds  # noqa: E402

import llm2vec_jax.recipe  # noqa: E402
from llm2vec_jax.typed_config import TrainConfigError  # noqa: E402

RECIPE = REPO / "configs" / "recipes" / "smollm2-1h-causal.yaml"


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """run_recipe and the results file replaced: what each seed would have run."""
    recipes = {}

    def run(recipe):
        seed = recipe.stages[0].config.run.seed
        recipes[seed] = recipe
        return {"rows": {"base": {"sts": {"bidirectional_mean": {"spearman": 0.1 * seed}}}}}

    monkeypatch.setattr(llm2vec_jax.recipe, "run_recipe", run)
    monkeypatch.setattr(recipe_seeds.common, "write_results", lambda name, data: tmp_path / name)
    return recipes


def test_each_seed_runs_the_cut_recipe(captured, tmp_path):
    assert recipe_seeds.main([str(RECIPE), "--seeds", "2", "--first-seed", "1", "--stages",
                              "simcse", "--out-dir", str(tmp_path / "out")]) == 0
    assert sorted(captured) == [1, 2]
    for seed, recipe in captured.items():
        assert [s.name for s in recipe.stages] == ["simcse"]
        assert recipe.output_dir == str(tmp_path / "out" / f"seed-{seed}")
        simcse = recipe.stage("simcse").config
        assert simcse.optimizer.learning_rate == 2e-3 and simcse.model.attention == "causal"


def test_a_cut_without_a_stage_s_predecessor_is_refused(captured, tmp_path):
    with pytest.raises(TrainConfigError, match="supervised trains on the adapter of simcse"):
        recipe_seeds.main([str(RECIPE), "--seeds", "1", "--stages", "supervised",
                           "--out-dir", str(tmp_path / "out")])
    assert not captured
