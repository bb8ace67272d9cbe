"""The plugin's settings object: one parser, one set of names, every channel, validation, resume."""

import re
from pathlib import Path
from typing import Any

import pytest

from exgramed_plugin.modeling.configuration import ExGraMedConfig
from exgramed_plugin.settings import (SETTING_KEYS, MGASettings, SettingsError, apply_mga_to_config, parse_settings,
                                      with_saved_mga)

TRAINING_DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"

# Every knob of the settings table (docs/training.md) with a non-default value, as a string (what the environment holds).
NON_DEFAULT = {"mga_alpha": ("0.5", 0.5), "mga_k": ("3", 3), "mga_lambda": ("40", 40.0),
               "mga_gumbel_scale": ("0.1", 0.1), "mga_solver": ("lap", "lap"), "mga_hidden_features": ("32", 32),
               "mga_message_flow": ("standard", "standard"), "mga_use_message_passing": ("0", False),
               "mga_fidelity": ("1", True), "mga_pooling": ("padded", "padded"), "mga_after_de": ("false", False),
               "mga_global_graph": ("yes", True), "mga_seed": ("11", 11), "mga_objective": ("infonce", "infonce"),
               "mga_text_packing": ("off", False), "mga_solver_search": ("40", 40)}


def documented_mga_defaults() -> dict[str, Any]:
    """The ``default`` column of docs/training.md's settings table, by ``mga_*`` key, parsed from the
    markdown: the reference the code must match, so a drift between the docs and the code fails."""
    rows = re.findall(r"^\| `MGA_\w+` / `(mga_\w+)` \| ([^|]+) \|", TRAINING_DOC.read_text(), re.MULTILINE)
    assert rows, f"no settings table found in {TRAINING_DOC}"
    return {key: _documented_value(text.strip().strip("`")) for key, text in rows}


def _documented_value(text: str) -> Any:
    """A table cell as a value: ``1`` / ``0`` booleans are kept as ints here (1 == True in Python)."""
    if text == "hidden size":  # the GNN width follows the model: stored as None
        return None
    try:
        return float(text)
    except ValueError:
        return text


def test_defaults_are_the_documented_ones():
    documented = documented_mga_defaults()
    config = ExGraMedConfig()
    effective = apply_mga_to_config(config, parse_settings({}, loss_type="exgra_mga"))
    code = {key: value for key, value in effective.config_values().items() if key != "mga_enabled"}
    assert set(documented) == set(code)  # every knob is in the table, and only knobs are
    assert {key: code[key] for key in documented} == documented
    assert {key: getattr(config, key) for key in documented} == documented  # what a fresh config.json holds
    assert config.mga_enabled  # MGA_ENABLED: "from --loss_type"


def test_the_original_hyper_parameters_are_the_defaults():
    """Written out by hand from docs/method.md (the original's code): alpha 1.0 (§3.4), kNN k = 5
    (§3.5), Gumbel(0, 0.05) noise (§3.8), lambda = 80 (§3.9, §3.10), reverse-kNN message passing
    (§3.6), text nodes after the Dense Connector forward (``--after_de True``, §3)."""
    settings = MGASettings()
    assert (settings.alpha, settings.k, settings.lambda_val, settings.gumbel_scale) == (1.0, 5, 80.0, 0.05)
    assert (settings.message_flow, settings.use_message_passing, settings.after_de) == ("original", True, True)


@pytest.mark.parametrize("key", sorted(NON_DEFAULT))
@pytest.mark.parametrize("channel", ["environment", "model_kwargs"])
def test_each_knob_reaches_the_object_and_the_config_through_each_channel(key, channel):
    raw, expected = NON_DEFAULT[key]
    if channel == "environment":  # also what a recipe's ENV: block sets
        settings = parse_settings({key.upper(): raw}, loss_type="exgra_mga")
    else:  # --model_kwargs '{"mga_k": 3}' (typed JSON values, not strings)
        settings = parse_settings({}, {key: expected}, loss_type="exgra_mga")
    config = ExGraMedConfig()
    apply_mga_to_config(config, settings)
    assert getattr(config, key) == expected
    assert settings.describe()[key] == expected
    assert key in settings.explicit


def test_model_kwargs_win_over_the_environment():
    settings = parse_settings({"MGA_K": "4"}, {"mga_k": 6})
    assert settings.mga.k == 6


def test_template_and_loader_switches():
    settings = parse_settings({"EXGRAMED_PROMPT_STYLE": "v0", "EXGRAMED_RESPONSE_MODE": "clean",
                               "EXGRAMED_LEGACY_TOKENIZATION": "0", "VISION_TOWER": "/x/clip",
                               "EXGRAMED_DENSE_CONNECTOR": "dci", "EXGRAMED_NUM_L": "4"})
    assert (settings.template.prompt_style, settings.template.response_mode) == ("v0", "clean")
    assert settings.template.legacy_tokenization is False
    assert (settings.loader.vision_tower, settings.loader.dense_connector, settings.loader.num_l) == ("/x/clip", "dci", 4)
    assert parse_settings({}).template.legacy_tokenization is None  # None = what the checkpoint says


def test_enabled_comes_from_loss_type_unless_forced():
    assert parse_settings({}, loss_type="exgra_mga").mga.enabled
    assert not parse_settings({}, loss_type="cross_entropy").mga.enabled
    assert not parse_settings({"MGA_ENABLED": "0"}, loss_type="exgra_mga").mga.enabled
    assert parse_settings({"MGA_ENABLED": "1"}).mga.enabled
    assert not parse_settings({"MGA_ALPHA": "0"}, loss_type="exgra_mga").mga.active


@pytest.mark.parametrize("environ, message", [
    ({"MGA_K": "five"}, "MGA_K='five': invalid literal"),
    ({"MGA_SOLVER": "hungarian"}, "MGA_SOLVER='hungarian': expected one of"),
    ({"MGA_POOLING": "sum"}, "MGA_POOLING='sum': expected one of masked, padded"),
    ({"MGA_FIDELITY": "maybe"}, "MGA_FIDELITY='maybe': expected a boolean"),
    ({"MGA_ALPHA": "-1"}, "MGA_ALPHA='-1': must be >= 0.0"),
    ({"EXGRAMED_PROMPT_STYLE": "chatml"}, "EXGRAMED_PROMPT_STYLE='chatml': expected one of simple, v0"),
    ({"MGA_ALHPA": "1"}, "unknown setting MGA_ALHPA (environment)"),
    ({"MGA_SOLVER_SEARCH": "-2"}, "MGA_SOLVER_SEARCH='-2': must be >= 0"),
    ({"MGA_SOLVER": "ipfp", "MGA_SOLVER_SEARCH": "20"}, "MGA_SOLVER_SEARCH=20 (environment / --model_kwargs): the "
     "search belongs to MGA_SOLVER=auto, not 'ipfp'"),
    ({"EXGRAMED_PROMT_STYLE": "v0"}, "unknown setting EXGRAMED_PROMT_STYLE"),
])
def test_bad_values_name_the_setting_the_value_and_the_allowed_ones(environ, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_settings(environ)


def test_paths_and_foreign_variables_are_not_settings():
    parse_settings({"EXGRAMED_DATA_ROOT": "/d", "EXGRAMED_IMAGE_ROOT": "/i", "PATH": "/bin", "MGA": "x"})


def test_unknown_model_kwarg_is_refused_but_foreign_ones_pass():
    with pytest.raises(SettingsError, match="unknown setting 'mga_alhpa' \\(--model_kwargs\\)"):
        parse_settings({}, {"mga_alhpa": 1})
    parse_settings({}, {"attn_implementation": "sdpa"})  # swift's own model kwargs are not ours


def test_resume_takes_the_saved_settings_and_refuses_a_conflict():
    saved = MGASettings(enabled=True, k=3, lambda_val=40.0)
    resumed = with_saved_mga(parse_settings({}, loss_type="exgra_mga"), saved, "ckpt")
    assert (resumed.mga.k, resumed.mga.lambda_val, resumed.mga.enabled) == (3, 40.0, True)
    same = with_saved_mga(parse_settings({"MGA_K": "3"}, loss_type="exgra_mga"), saved, "ckpt")
    assert same.mga.k == 3
    with pytest.raises(SettingsError, match=r"MGA_K=5 \(saved: 3\)"):
        with_saved_mga(parse_settings({"MGA_K": "5"}, loss_type="exgra_mga"), saved, "ckpt")


def test_the_saved_config_round_trips(tmp_path):
    config = ExGraMedConfig()
    effective = apply_mga_to_config(config, parse_settings({"MGA_K": "3", "MGA_SOLVER": "lap"}, loss_type="exgra_mga"))
    config.save_pretrained(tmp_path)
    assert MGASettings.from_config(ExGraMedConfig.from_pretrained(tmp_path)) == effective


def test_every_key_is_documented_once():
    assert len(SETTING_KEYS) == len(set(SETTING_KEYS))
    assert all(key == key.lower() for key in SETTING_KEYS)
