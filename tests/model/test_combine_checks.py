"""add_weighted_adapter: bad arguments are typed errors that leave the model as it was, and the
combined adapter is an ordinary adapter (saved, reloaded by PEFT and by adapterkit)."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import PeftModel

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.errors import (
    AdapterCombinationError,
    AdapterError,
    AdapterExistsError,
    UnknownAdapterError,
)
from helpers import logits, max_diff, randomize_adapter, tiny_bert, tiny_llama

TOL = 1e-5


def _model():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                    init_lora_weights=False))
    model.add_adapter("b", LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False))
    model.add_adapter("c", LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    model.add_adapter("regex", LoraConfig(r=4, target_modules=r".*\.q_proj", init_lora_weights=False))
    model.add_adapter("fewer_layers", LoraConfig(r=4, target_modules=["q_proj"], layers_to_transform=[0],
                                                 init_lora_weights=False))
    randomize_adapter(model, seed=4)
    return model.eval()


def _state(model):
    return (sorted(model.peft_config), tuple(model.active_adapters),
            {k: v.clone() for k, v in model.state_dict().items()}, [n for n, _ in model.named_modules()])


def _bad_calls():
    """(kwargs, expected error) families, generated rather than hand-picked."""
    good = dict(adapters=["default", "b"], weights=[1.0, 0.5], adapter_name="mix", combination_type="ties",
                density=0.5)
    calls = []
    for adapters in (["nope"], ["default", "missing"], [], "default", None):
        calls.append(({**good, "adapters": adapters, "weights": [1.0] * (len(adapters) if adapters else 1)},
                      UnknownAdapterError if adapters and not isinstance(adapters, str) else AdapterCombinationError))
    for weights in ([1.0], [1.0, 2.0, 3.0], [1.0, "x"], [1.0, float("nan")], [float("inf"), 1.0], [True, 1.0],
                    None, "1,2"):
        calls.append(({**good, "weights": weights}, AdapterCombinationError))
    for kind in ("", "SVD", "dare", "sum", None):
        calls.append(({**good, "combination_type": kind}, AdapterCombinationError))
    for kind, density in itertools.product(("ties", "dare_linear", "dare_ties_svd", "magnitude_prune"),
                                           (None, 0, -0.5, 1.5, float("nan"), "0.5", True)):
        calls.append(({**good, "combination_type": kind, "density": density}, AdapterCombinationError))
    for method in ("majority", "", None, "TOTAL"):
        calls.append(({**good, "majority_sign_method": method}, AdapterCombinationError))
    for rank in (0, -2, 2.5, True, "4"):
        calls.append(({**good, "combination_type": "svd", "density": None, "svd_rank": rank}, AdapterCombinationError))
    for clamp in (-0.1, 1.5, "0.9"):
        calls.append(({**good, "combination_type": "svd", "density": None, "svd_clamp": clamp}, AdapterCombinationError))
    for kind in ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"):  # ranks 4 and 2
        calls.append(({**good, "adapters": ["default", "c"], "combination_type": kind}, AdapterCombinationError))
    for kind in ("svd", "cat", "linear"):
        calls.append(({**good, "adapters": ["default", "regex"], "combination_type": kind, "density": None},
                      AdapterCombinationError))  # a regex string and a list of names
        # The first adapter's layers_to_transform would drop layer 1 of "default".
        calls.append(({**good, "adapters": ["fewer_layers", "default"], "combination_type": kind, "density": None},
                      AdapterCombinationError))
    calls.append(({**good, "adapter_name": "b"}, AdapterExistsError))
    for name in ("a.b", "x/y", "", "__base__"):
        calls.append(({**good, "adapter_name": name}, ValueError))
    return calls


BAD_CALLS = _bad_calls()


def test_every_bad_call_is_a_typed_error_and_changes_nothing():
    model = _model()
    before = _state(model)
    for kwargs, error in BAD_CALLS:
        with pytest.raises(error) as caught:
            model.add_weighted_adapter(**kwargs)
        assert isinstance(caught.value, (AdapterError, ValueError)), kwargs
        after = _state(model)
        assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3], kwargs
        assert all(torch.equal(after[2][k], v) for k, v in before[2].items()), kwargs
    assert len(BAD_CALLS) > 60


def test_shared_modules_to_save_are_refused():
    model = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    model.add_adapter("other", LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    with pytest.raises(AdapterCombinationError, match="modules_to_save"):
        model.add_weighted_adapter(["default", "other"], [1.0, 1.0], "mix", combination_type="cat")
    assert "mix" not in model.peft_config


def test_cat_and_full_rank_svd_are_exact_weighted_sums():
    """cat and an SVD at full rank reproduce Σ w_i s_i B_i A_i at every module."""
    model = _model()
    weights = {"default": 0.8, "b": -1.5}
    model.add_weighted_adapter(list(weights), list(weights.values()), "cat", combination_type="cat")
    model.add_weighted_adapter(list(weights), list(weights.values()), "svd", combination_type="svd", svd_rank=16)
    for path, lora in model._loras().items():
        if not lora.has("cat"):
            continue
        expected = sum(w * lora.delta_weight(n) for n, w in weights.items() if lora.has(n))
        assert max_diff(lora.delta_weight("cat"), expected) <= TOL, path
        assert max_diff(lora.delta_weight("svd"), expected) <= 1e-4, path
        assert lora.info["cat"].scale == 1.0 and lora.info["cat"].rank == 8


def test_combined_adapter_saves_and_reloads_in_peft_and_adapterkit(tmp_path):
    model = _model()
    model.add_weighted_adapter(["default", "b"], [1.0, 0.7], "mix", combination_type="ties", density=0.5)
    assert model.active_adapters == ["default"]  # as in PEFT, the new adapter is not switched on
    model.set_adapter("mix")
    expected = logits(model)
    assert max_diff(expected, logits(tiny_llama())) > 1e-3
    model.save_pretrained(tmp_path / "mix", selected_adapters=["mix"])
    saved = LoraConfig.from_json_file(str(tmp_path / "mix" / "mix" / "adapter_config.json"))
    assert saved.target_modules == ["k_proj", "q_proj", "v_proj"] and saved.r == saved.lora_alpha == 4

    ours = AdapterModel.from_pretrained(tiny_llama(), tmp_path / "mix" / "mix")
    assert max_diff(logits(ours), expected) <= TOL
    theirs = PeftModel.from_pretrained(tiny_llama(), tmp_path / "mix" / "mix").eval()
    assert max_diff(logits(theirs), expected) <= TOL


def test_a_combination_is_cached_by_its_definition():
    from adapterkit.model.combine import ensure_weighted_adapter

    model, other = _model(), _model()
    torch.manual_seed(99)
    state = torch.get_rng_state()
    name = ensure_weighted_adapter(model, ["default", "b"], [1.0, 0.5], "dare_ties", density=0.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    assert ensure_weighted_adapter(model, ["default", "b"], [1, 0.5], "dare_ties", density=0.5, seed=3) == name
    assert sum(n.startswith("combination-") for n in model.peft_config) == 1  # reused, not added twice
    again = ensure_weighted_adapter(other, ["default", "b"], [1.0, 0.5], "dare_ties", density=0.5, seed=3)
    assert again == name
    for path, lora in model._loras().items():  # same seed, same masks, on another model
        if lora.has(name):
            assert torch.equal(lora.delta_weight(name), other._loras()[path].delta_weight(name)), path
    different = {ensure_weighted_adapter(model, ["default", "b"], w, "dare_ties", density=d, seed=s)
                 for w, d, s in [([1.0, 0.6], 0.5, 3), ([1.0, 0.5], 0.4, 3), ([1.0, 0.5], 0.5, 4)]}
    assert len(different) == 3 and name not in different


def test_a_bad_cached_combination_is_a_typed_error():
    from adapterkit.model.combine import ensure_weighted_adapter

    model = _model()
    for weights in (["x", 1.0], [None, 1.0], [1.0]):
        with pytest.raises(AdapterCombinationError):
            ensure_weighted_adapter(model, ["default", "b"], weights, "linear")
    with pytest.raises(UnknownAdapterError):
        ensure_weighted_adapter(model, ["default", "nope"], [1.0, 1.0], "linear")
    assert not any(n.startswith("combination-") for n in model.peft_config)
