"""Regression found in review: PEFT refuses layer selection with a string target_modules;
adapterkit ignored it and adapted every layer."""

from __future__ import annotations

import pytest

from adapterkit import AdapterConfigError, LoraConfig


@pytest.mark.parametrize("field", [dict(layers_to_transform=[0]), dict(layers_pattern="layers")])
@pytest.mark.parametrize("target", ["all-linear", r".*\.q_proj"])
def test_layer_selection_with_a_string_target_is_refused_as_in_peft(field, target):
    with pytest.raises(AdapterConfigError, match="list"):
        LoraConfig(target_modules=target, **field)
