"""``bench/mntp_study.py`` without training: each variant's MNTP stage differs from the
shipped one in exactly the factor it names, its SimCSE stage sits on it, and the table's
numbers are the hand-computed ones. (The stages themselves are ordinary recipe stages, which
the recipe and ablation-grid tests run; ``model.init_adapter`` has its own test.)"""

from __future__ import annotations

import sys

import pytest
import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import mntp_study  # noqa: E402

from llm2vec_jax.recipe.schema import load_recipe  # noqa: E402


def recipe(tmp_path, *args):
    a = mntp_study._parser().parse_args(["--mntp-data", "sample:wikitext",
                                         "--simcse-data", "sample:wiki1m", *args])
    return a, mntp_study.recipe_for_seed(a, 1, tmp_path / "seed-1")


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_each_variant_changes_one_factor_of_the_shipped_mntp(tmp_path):
    _, raw = recipe(tmp_path)
    stages = {s["name"]: s for s in raw["stages"]}
    shipped = flatten(stages["mntp_wikitext"])
    expected = {"wiki1m": {"data.path": "sample:wiki1m"},
                "lr2e-4": {"optimizer.learning_rate": 2e-4},
                "steps3x": {"run.max_steps": 180},
                "mask-eos": {"data.mask_token_type": "eos"},
                "rank64": {"lora.r": 64, "lora.alpha": 128}}
    for variant, change in expected.items():
        stage = flatten(stages[f"mntp_{variant}"])
        differing = {k: v for k, v in stage.items() if k != "name" and shipped.get(k) != v}
        assert differing == change, variant
        assert stages[f"simcse_{variant}"]["after"] == f"mntp_{variant}"
    assert stages["simcse_wikitext"]["after"] == "mntp_wikitext"
    assert stages["bi_simcse"]["after"] is None
    assert all(s["run"]["seed"] == 1 for s in raw["stages"])
    continued = stages["simcse_unmerged"]
    assert continued["after"] is None
    assert continued["model"]["init_adapter"] == str(
        (tmp_path / "seed-1" / "mntp_wikitext" / "adapter").resolve())
    assert "mntp_unmerged" not in stages


def test_the_recipe_loads_and_unmerged_alone_brings_its_mntp_stage(tmp_path):
    a, raw = recipe(tmp_path, "--variants", "unmerged")
    assert [s["name"] for s in raw["stages"]] == ["bi_simcse", "mntp_wikitext",
                                                  "simcse_unmerged"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    loaded = load_recipe(path)
    stage = loaded.stage("simcse_unmerged")
    assert stage.config.model.init_adapter.endswith("mntp_wikitext/adapter")
    assert stage.config.model.adapter is None
    assert loaded.stage("bi_simcse").config.run.max_steps == a.simcse_steps == 100


def test_mntp_only_keeps_each_variants_mntp_stage_and_nothing_else(tmp_path):
    _, full = recipe(tmp_path)
    _, raw = recipe(tmp_path, "--mntp-only")
    mntp_stages = [s for s in full["stages"] if s["name"].startswith("mntp_")]
    assert raw["stages"] == mntp_stages
    assert [s["name"] for s in raw["stages"]] == [
        "mntp_wikitext", "mntp_wiki1m", "mntp_lr2e-4", "mntp_steps3x", "mntp_mask-eos",
        "mntp_rank64"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_recipe(path).encoder_stage == "mntp_rank64"
    with pytest.raises(SystemExit, match="unmerged"):
        recipe(tmp_path, "--mntp-only", "--variants", "unmerged")


def test_unknown_variant_is_refused_with_the_choices():
    a = mntp_study._parser().parse_args(["--variants", "wikitext,rank8"])
    with pytest.raises(SystemExit, match=r"unknown variant\(s\) \['rank8'\].*rank64"):
        mntp_study.chosen_variants(a)


def _result(control, rows):
    sts = {name: {"sts": {"bidirectional_mean": {"spearman": v / 100}},
                  "train": {"eval_accuracy": acc}} for name, (v, acc) in rows.items()}
    sts["bi_simcse"] = {"sts": {"bidirectional_mean": {"spearman": control / 100}}}
    return {"rows": sts}


def test_the_table_is_the_hand_computed_one():
    per_seed = {0: _result(40.0, {"mntp_wikitext": (30.0, 0.25), "simcse_wikitext": (44.0, None),
                                  "simcse_unmerged": (38.0, None)}),
                1: _result(42.0, {"mntp_wikitext": (32.0, 0.27), "simcse_wikitext": (48.0, None),
                                  "simcse_unmerged": (40.0, None)})}
    table = {r["variant"]: r for r in mntp_study.summarise(per_seed, ["wikitext", "unmerged"])}
    control = table["none (SimCSE from the bidirectional base)"]
    assert control["after_simcse_mean"] == pytest.approx(41.0)
    assert control["after_simcse_std"] == pytest.approx(2 ** 0.5)   # sample std of 40, 42
    wikitext = table["wikitext"]
    assert wikitext["after_mntp_mean"] == pytest.approx(31.0)
    assert wikitext["after_simcse_mean"] == pytest.approx(46.0)
    assert wikitext["after_simcse_std"] == pytest.approx(8 ** 0.5)   # 44, 48
    assert wikitext["simcse_vs_control"] == pytest.approx(5.0)
    assert wikitext["mntp_eval_accuracy"] == [0.25, 0.27]
    unmerged = table["unmerged"]   # wikitext's MNTP row, its own SimCSE row
    assert unmerged["after_mntp"] == [30.0, 32.0]
    assert unmerged["simcse_vs_control"] == pytest.approx(-2.0)
    md = mntp_study.markdown(list(table.values()), 28.5, 2)
    assert "| wikitext | 31.00 ± 1.41 | 0.260 | 46.00 ± 2.83 | +5.00 |" in md
    assert "| unmerged | 31.00 ± 1.41 | 0.260 | 39.00 ± 1.41 | -2.00 |" in md
    assert md.startswith("Bidirectional base, no training: 28.50")
