"""Every config field of the wrong type or range is refused with AdapterConfigError naming the
field, its value (shortened) and what is expected, both from Python and from a file."""

from __future__ import annotations

import json

import pytest

from adapterkit import AdapterConfigError, LoraConfig
from adapterkit.core.config_checks import FIELD_RULES, MAX_RANK

GOOD = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
# Values that no field accepts, plus each field's own near misses.
UNIVERSALLY_WRONG = [{"nested": {"deeper": [1]}}, [[["x"]]], 1e400]
NEAR_MISSES = {
    "r": [0, -3, 2.0, True, "8", MAX_RANK + 1, 10**400],
    "lora_alpha": ["16", None, True, [16], 10**400],
    "target_modules": [3, "(", ["q_proj", 3], {"q_proj": 1}],
    "exclude_modules": [3, "[", [None]],
    "lora_dropout": ["0.1", 1.0, -0.1, float("nan")],
    "modules_to_save": ["classifier", 3, [1]],
    "layers_to_transform": ["0", [0, "1"], [-1], [True], 1.5],
    "layers_pattern": [3, ["layers", 2], "(", "(?P<idx>x)"],
    "rank_pattern": [[1], {"q_proj": "4"}, {"q_proj": 0}, {"(": 4}, {"q_proj": 2.0}],
    "alpha_pattern": [[1], {"q_proj": "x"}, {"q_proj": None}, {"[": 4}],
    "bias": ["some", None, 1],
    "init_lora_weights": ["loftq", "pissa_niter_0", 1, None],
    "use_rslora": ["true", 1, None],
    "task_type": [["CAUSAL_LM"], 3],
    "peft_type": [None, 3],
}
CASES = [(field, value) for field in FIELD_RULES
         for value in NEAR_MISSES.get(field, []) + [v for v in UNIVERSALLY_WRONG if FIELD_RULES[field](v)]]


def test_every_field_has_cases():
    assert {field for field, _ in CASES} == set(FIELD_RULES)
    assert len(CASES) > 100


@pytest.mark.parametrize("field, value", CASES, ids=[f"{f}={str(v)[:20]}" for f, v in CASES])
def test_wrong_value_is_refused_naming_field_value_and_expectation(field, value, tmp_path):
    with pytest.raises(AdapterConfigError) as direct:
        LoraConfig(**{**{k: v for k, v in GOOD.items() if k != "peft_type"}, field: value})
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**GOOD, field: value}))
    with pytest.raises(AdapterConfigError) as from_file:
        LoraConfig.from_json_file(str(path))
    for message in (str(direct.value), str(from_file.value)):
        assert f"field {field} is " in message and "expected" in message, message
        assert len(message) < 600, message  # the value is shown shortened
    assert str(path) in str(from_file.value)


def test_a_string_modules_to_save_is_refused_with_the_list_it_meant():
    with pytest.raises(AdapterConfigError, match=r"\['classifier'\]"):
        LoraConfig(target_modules=["q_proj"], modules_to_save="classifier")


def test_mutated_config_is_rechecked_before_use():
    config = LoraConfig(target_modules=["q_proj"])
    config.lora_alpha = "16"
    with pytest.raises(AdapterConfigError, match="field lora_alpha"):
        config.validate()


@pytest.mark.parametrize("label, raw, field", [
    ("not UTF-8", b'{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "revision": "\xff\xfe"}', "revision"),
    ("5,000 digits", b'{"peft_type": "LORA", "lora_alpha": 8, "r": ' + b"9" * 5000 + b"}", "r"),
    ("100,000 deep", b'{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": '
     + b"[" * 100_000 + b"]" * 100_000 + b"}", "target_modules"),
])
def test_values_python_cannot_even_parse_name_their_field(label, raw, field, tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(raw)
    with pytest.raises(AdapterConfigError) as info:
        LoraConfig.from_json_file(str(path))
    message = str(info.value)
    assert f"field {field}" in message and "expected" in message and len(message) < 600, message


@pytest.mark.parametrize("raw", [b"", b"[]", b"\xef\xbb\xbf{}", b"[" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000])
def test_unreadable_configs_are_config_errors(raw, tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_bytes(raw)
    with pytest.raises(AdapterConfigError):
        LoraConfig.from_json_file(str(path))


def test_a_refused_file_gives_one_message_and_no_unknown_field_warning(tmp_path, recwarn):
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({**GOOD, "future_field": 1, "lora_alpha": "x"}))
    with pytest.raises(AdapterConfigError):
        LoraConfig.from_json_file(str(path))
    assert not [w for w in recwarn if "future_field" in str(w.message)]
