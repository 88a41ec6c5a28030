"""LoraConfig: PEFT's field names, sorted JSON, tolerant of unknown fields, strict on missing ones."""

from __future__ import annotations

import json
import warnings

import pytest
from peft import LoraConfig as PeftLoraConfig

from adapterkit import AdapterConfigError, LoraConfig, UnsupportedAdapterError


def test_json_is_sorted_and_uses_peft_field_names():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    text = config.to_json()
    data = json.loads(text)
    assert list(data) == sorted(data)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    peft_fields = set(PeftLoraConfig(r=4, target_modules=["q_proj"]).to_dict())
    assert set(data) <= peft_fields, set(data) - peft_fields
    assert data["peft_type"] == "LORA" and data["r"] == 4 and data["lora_alpha"] == 8


def test_round_trip_through_json():
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], rank_pattern={"q_proj": 2},
                        alpha_pattern={"q_proj": 3.0}, use_rslora=True, bias="lora_only", modules_to_save=["head"])
    again = LoraConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_peft_written_config_reads_without_warning(tmp_path):
    peft_config = PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM")
    peft_config.save_pretrained(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = LoraConfig.from_json_file(str(tmp_path / "adapter_config.json"))
    assert config.r == 4 and config.lora_alpha == 8 and config.target_modules == ["q_proj"]
    assert config.task_type == "CAUSAL_LM"


def test_unknown_fields_give_exactly_one_warning():
    data = json.loads(LoraConfig(r=2, target_modules=["q_proj"]).to_json())
    data["from_a_newer_peft"] = 1
    data["another_new_field"] = "x"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = LoraConfig.from_dict(data, source="some/adapter_config.json")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "another_new_field" in message and "from_a_newer_peft" in message
    assert "some/adapter_config.json" in message
    assert config.r == 2


@pytest.mark.parametrize("field", ["r", "lora_alpha", "peft_type"])
def test_missing_output_changing_field_is_refused(field, tmp_path):
    data = json.loads(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]).to_json())
    del data[field]
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AdapterConfigError) as info:
        LoraConfig.from_json_file(str(path))
    assert field in str(info.value) and str(path) in str(info.value)


def test_invalid_json_is_a_config_error(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text("{not json")
    with pytest.raises(AdapterConfigError, match="not valid JSON"):
        LoraConfig.from_json_file(str(path))


@pytest.mark.parametrize("kwargs", [dict(r=0), dict(r=-1), dict(bias="some"), dict(lora_dropout=1.5),
                                    dict(rank_pattern={"q_proj": 0}), dict(init_lora_weights="loftq")])
def test_bad_values_are_refused(kwargs):
    with pytest.raises(AdapterConfigError):
        LoraConfig(target_modules=["q_proj"], **kwargs)


@pytest.mark.parametrize("kwargs", [dict(use_dora=True), dict(peft_type="IA3"), dict(use_qalora=True)])
def test_unsupported_options_are_refused(kwargs):
    with pytest.raises(UnsupportedAdapterError):
        LoraConfig(target_modules=["q_proj"], **kwargs).check_supported()


def test_rank_and_alpha_patterns_match_at_dot_boundaries():
    config = LoraConfig(r=8, lora_alpha=16, rank_pattern={"v_proj": 2, r"layers\.1\.self_attn\.q_proj": 4},
                        alpha_pattern={"q_proj": 3.0})
    assert config.rank_for("model.layers.0.self_attn.v_proj") == 2
    assert config.rank_for("model.layers.1.self_attn.q_proj") == 4
    assert config.rank_for("model.layers.0.self_attn.q_proj") == 8
    assert config.rank_for("model.layers.0.self_attn.xv_proj") == 8  # not a dotted suffix
    assert config.alpha_for("model.layers.0.self_attn.q_proj") == 3.0
    assert config.alpha_for("model.layers.0.self_attn.k_proj") == 16


def test_task_heads_are_added_to_modules_to_save():
    config = LoraConfig(target_modules=["query"], task_type="SEQ_CLS", modules_to_save=["extra"])
    assert config.head_modules_to_save() == ["extra", "classifier", "score"]
    assert LoraConfig(target_modules=["q"], task_type="CAUSAL_LM").head_modules_to_save() == []


def test_sets_and_enums_are_normalised():
    from peft import TaskType

    config = LoraConfig(target_modules={"v_proj", "q_proj"}, task_type=TaskType.CAUSAL_LM, layers_to_transform=1)
    assert config.target_modules == ["q_proj", "v_proj"]
    assert config.task_type == "CAUSAL_LM"
    assert config.layers_to_transform == [1]
    json.loads(config.to_json())  # serialisable
