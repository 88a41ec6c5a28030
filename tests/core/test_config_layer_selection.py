"""Layer selection (layers_to_transform, layers_pattern) needs target_modules as a list: PEFT
refuses it with a string, which would otherwise silently adapt every layer."""

from __future__ import annotations

import pytest

from adapterkit import AdapterConfigError, LoraConfig


@pytest.mark.parametrize("field", [dict(layers_to_transform=[0]), dict(layers_pattern="layers")])
@pytest.mark.parametrize("target", ["all-linear", r".*\.q_proj"])
def test_layer_selection_with_a_string_target_is_refused_as_in_peft(field, target):
    with pytest.raises(AdapterConfigError, match="list"):
        LoraConfig(target_modules=target, **field)
