"""When the fields that narrow target_modules remove every module it matched, the error names
the field that removed them, not target_modules."""

from __future__ import annotations

import pytest

from adapterkit import LoraConfig, TargetModulesError
from adapterkit.core.targeting import find_targets
from helpers import tiny_llama


@pytest.mark.parametrize("narrowing, field", [
    (dict(layers_to_transform=[7]), "layers_to_transform"),
    (dict(layers_to_transform=[0], layers_pattern="blocks"), "layers_to_transform"),
    (dict(exclude_modules=["q_proj"]), "exclude_modules"),
    (dict(exclude_modules=r".*\.q_proj"), "exclude_modules"),
    (dict(modules_to_save=["self_attn"]), "modules_to_save"),
])
def test_the_field_that_removed_every_target_is_named(narrowing, field):
    config = LoraConfig(target_modules=["q_proj"], **narrowing)
    with pytest.raises(TargetModulesError) as info:
        find_targets(tiny_llama(), config)
    message = str(info.value)
    assert message.startswith(field), message
    assert "matched no adaptable module" not in message
    assert "2 in all" in message  # q_proj in each of the two layers


def test_layer_indices_found_are_listed():
    with pytest.raises(TargetModulesError, match=r"layer indices are \[0, 1\]"):
        find_targets(tiny_llama(), LoraConfig(target_modules=["q_proj"], layers_to_transform=[5]))


def test_two_fields_removing_parts_are_both_named():
    config = LoraConfig(target_modules=["q_proj", "v_proj"], exclude_modules=["v_proj"], layers_to_transform=[9])
    with pytest.raises(TargetModulesError) as info:
        find_targets(tiny_llama(), config)
    assert "exclude_modules" in str(info.value) and "layers_to_transform" in str(info.value)


def test_target_that_matches_nothing_still_blames_target_modules():
    with pytest.raises(TargetModulesError, match="target_modules=.*matched no adaptable module"):
        find_targets(tiny_llama(), LoraConfig(target_modules=["c_attn"], layers_to_transform=[0]))
