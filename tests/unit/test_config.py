"""Configuration errors name the file and the key."""

from __future__ import annotations

import pytest

from operando.config import (
    ConfigError,
    demo_presets,
    list_presets,
    load_config,
    parse_config,
    preset_path,
)


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("[alignment]\ntimeout_s = 3\ncapacity = 1\n")
    with pytest.raises(ConfigError, match=r"x.toml: alignment: .*unknown field `capacity`"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"sources\[0\].role: Invalid enum value 'camera'"):
        parse_config({"sources": [{"name": "a", "role": "camera", "data": "tcp://x"}]})


def test_bad_values_and_duplicates():
    with pytest.raises(ConfigError, match="capacity_mAh: must be > 0"):
        parse_config({"alignment": {"capacity_mAh": 0}})
    src = {"name": "a", "role": "spectrometer", "data": "tcp://x"}
    with pytest.raises(ConfigError, match="names must be unique"):
        parse_config({"sources": [src, src]})


def test_toml_syntax_error_names_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[run\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(p)


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_preset_loads(name):
    cfg = load_config(preset_path(name))
    assert cfg.potentiostat is not None
    assert bool(cfg.drivers) == (name in demo_presets())


def test_presets_include_the_four_demos_and_only_demos_run_in_demo():
    assert {"peo-nmc", "peo-lfp-relaxation", "lnmo-surface", "na-mno2"} <= set(demo_presets())
    assert "eclab-potentiostat" in set(list_presets()) - set(demo_presets())


def test_the_dose_budget_has_one_home():
    """[analysis] dose_budget_Gy is read by the warnings, the spot rotation and the dashboard.
    A file that also (or only) sets it under [orchestration] is refused, naming both places:
    with only that one set, spots rotated but no budget warning ever fired."""
    assert parse_config({"analysis": {"dose_budget_Gy": 5e6}}).analysis.dose_budget_Gy == 5e6
    both = {"analysis": {"dose_budget_Gy": 5e6}, "orchestration": {"dose_budget_Gy": 1e6}}
    with pytest.raises(
        ConfigError,
        match=r"set twice.*analysis.dose_budget_Gy = 5000000.0.*"
        r"orchestration.dose_budget_Gy = 1000000.0",
    ):
        parse_config(both, "x.toml")
    with pytest.raises(ConfigError, match=r"^x.toml: orchestration.dose_budget_Gy: .*\[analysis\]"):
        parse_config({"orchestration": {"dose_budget_Gy": 1e6}}, "x.toml")


def test_one_rest_criterion_from_one_setting():
    from operando.protocol import MODE_CC, MODE_OCV

    rest = parse_config({"analysis": {"rest_current_mA": 0.02}}).analysis.rest
    assert rest(MODE_CC, 0.01) and not rest(MODE_CC, 0.03) and rest(MODE_OCV, 1.0)
    with pytest.raises(ConfigError, match="analysis.damage: .*unknown field `rest_current_mA`"):
        parse_config({"analysis": {"damage": {"rest_current_mA": 0.01}}})
