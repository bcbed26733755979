"""``bench/recipe_seeds.py`` without training: ``--stages`` cuts a shipped recipe to the named
stages, keeps what each builds on and refuses a cut that leaves a stage without it; the
cut recipe still loads as a recipe."""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import recipe_seeds  # noqa: E402

from llm2vec_jax.recipe.schema import load_recipe  # noqa: E402

RECIPE = REPO / "configs" / "recipes" / "smollm2-1h-causal.yaml"


def shipped():
    return yaml.safe_load(RECIPE.read_text())


def test_stages_keeps_the_named_stages_and_loads(tmp_path):
    raw = shipped()
    assert [s["name"] for s in raw["stages"]] == ["simcse", "supervised"]
    cut = recipe_seeds.keep_stages(raw, ["simcse"])
    assert [s["name"] for s in cut["stages"]] == ["simcse"]
    assert cut["stages"][0] == raw["stages"][0] and cut["eval"] == raw["eval"]
    assert len(raw["stages"]) == 2  # the recipe it was cut from is unchanged
    for stage in cut["stages"]:
        stage["config"] = str((RECIPE.parent / stage["config"]).resolve())
    path = tmp_path / "cut.yaml"
    path.write_text(yaml.safe_dump(recipe_seeds.for_seed(cut, 2, tmp_path / "out")))
    loaded = load_recipe(path)
    assert [s.name for s in loaded.stages] == ["simcse"]
    assert loaded.stages[0].config.run.seed == 2


def test_stages_refuses_unknown_names_and_a_missing_predecessor():
    with pytest.raises(SystemExit, match="no stage named mntp in this recipe "
                                         r"\(it has simcse, supervised\)"):
        recipe_seeds.keep_stages(shipped(), ["simcse", "mntp"])
    with pytest.raises(SystemExit, match="supervised trains after simcse; keep simcse too"):
        recipe_seeds.keep_stages(shipped(), ["supervised"])
