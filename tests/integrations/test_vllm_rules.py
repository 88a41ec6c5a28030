"""`check --for vllm` against vLLM 0.33's own code: the config rules against PEFTHelper.validate_legal,
the tensor-name rules against parse_fine_tuned_lora_name, on generated families of inputs."""

from __future__ import annotations

import random

import pytest
import torch
from vllm_helpers import edit, saved_adapter, vllm_functions, vllm_source

from adapterkit.cli.main import main
from adapterkit.errors import AdapterConfigError
from adapterkit.integrations.vllm.rules import (
    MAX_LORA_RANKS,
    check_config,
    check_for_vllm,
    classify_key,
    smallest_max_rank_for,
)
from helpers import missing_tool

# Each rule and the words vLLM's own error message uses for it (peft_helper.py).
VLLM_WORDS = {
    "modules_to_save": "modules_to_save", "use_dora": "DoRA", "lora_bias": "lora_bias",
    "init_lora_weights": "init_lora_weights", "alora_invocation_tokens": "aLoRA",
    "layer_replication": "layer_replication", "use_bdlora": "BD-LoRA", "use_qalora": "QALoRA",
    "max_lora_rank": "max_lora_rank", "bias": "Adapter bias",
}
CHOICES = {
    "r": [1, 4, 8, 16, 17, 64, 300, 512, 513, 0, -2],
    "modules_to_save": [None, [], ["classifier"], ["score"], ["score", "classifier"], ["lm_head"], ["classifier", "embed_tokens"]],
    "use_dora": [False, True],
    "lora_bias": [False, True],
    "init_lora_weights": [True, False, "gaussian", "Eva", "orthogonal", "mica", "lora_ga", "pissa", "pissa_niter_4",
                          "olora", "corda", "loftq"],
    "bias": ["none", "all", "lora_only"],
    "rank_pattern": [{}, {"q_proj": 32}, {"v_proj": 600}, {"q_proj": 0}],
    "alora_invocation_tokens": [None, [5, 6]],
    "layer_replication": [None, [[0, 2]]],
    "use_bdlora": [None, {"blocks": 2}],
    "use_qalora": [False, True],
}


def generated_configs(count: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(count):
        config = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
        for field, values in CHOICES.items():
            if rng.random() < 0.35:  # a few features at a time, so single failures are common too
                config[field] = rng.choice(values)
        if rng.random() < 0.05:
            del config[rng.choice(["r", "lora_alpha", "target_modules"])]
        yield config, rng.choice(MAX_LORA_RANKS)


def vllm_verdict(config: dict, max_lora_rank: int, lora_configs: dict) -> str | None:
    """None if vLLM accepts the config, else its error message."""
    from vllm.lora.peft_helper import PEFTHelper

    try:
        PEFTHelper.from_dict(dict(config)).validate_legal(lora_configs[max_lora_rank])
    except ValueError as exc:
        return str(exc)
    return None


def test_config_rules_agree_with_vllm_peft_helper():
    try:
        from vllm.config.lora import LoRAConfig
    except ImportError as exc:
        missing_tool(f"vllm's PEFTHelper does not import here ({exc}); install vllm==0.33.0 --no-deps plus "
                    f"msgspec, cbor2, pyzmq, aiohttp, openai-harmony")
    lora_configs = {rank: LoRAConfig(max_lora_rank=rank) for rank in MAX_LORA_RANKS}
    checked = refused = 0
    for config, max_rank in generated_configs(600):
        theirs = vllm_verdict(config, max_rank, lora_configs)
        findings, _ = check_config(config, max_rank)
        ours = {f.rule for f in findings}
        assert (theirs is None) == (not findings), (config, max_rank, theirs, ours)
        if theirs is not None and not ours & {"missing_field", "rank"}:
            # Same reasons, one for one: each of our rules appears in vLLM's message and no other.
            for rule, words in VLLM_WORDS.items():
                assert (words in theirs) == (rule in ours), (rule, config, max_rank, theirs)
        checked += 1
        refused += theirs is not None
    assert checked == 600 and 100 < refused < 550  # the family exercises both verdicts


def test_each_rule_names_its_fix_and_vllm_function():
    for config, max_rank in generated_configs(200, seed=1):
        for finding in check_config(config, max_rank)[0]:
            text = str(finding)
            assert finding.source.split(".")[0] in ("PEFTHelper", "LoRAModel") and "fix: " in text
    rank_finding = check_config({"r": 40, "lora_alpha": 8, "target_modules": ["q"]}, 16)[0][0]
    assert rank_finding.fix == "start vLLM with --max-lora-rank 64"
    too_big = check_config({"r": 1024, "lora_alpha": 8, "target_modules": ["q"]}, 512)[0][0]
    assert "retrain with r <= 512" in too_big.fix


def test_smallest_max_rank_is_vllms_next_allowed_value():
    for rank in range(1, 600):
        fitting = smallest_max_rank_for(rank)
        allowed = [m for m in MAX_LORA_RANKS if m >= rank]
        assert fitting == (allowed[0] if allowed else None)


def test_key_rules_agree_with_vllm_parse_fine_tuned_lora_name(tmp_path):
    if vllm_source("lora/utils.py") is None:
        missing_tool("vllm is not installed; install vllm==0.33.0 --no-deps")
    real = vllm_functions("lora/utils.py", ("parse_fine_tuned_lora_name", "is_base_embedding_weights"))
    keys = saved_keys(tmp_path)
    variants = set()
    for key in keys:
        stem = key.rsplit(".", 2)[0]
        for tail in ("lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_A.bias", "lora_magnitude_vector",
                     "lora_magnitude_vector.weight", "weight", "bias", "base_layer.weight", "lora_embedding_A",
                     "lora_embedding_B", "lora_embedding_A.weight"):
            variants.add(f"{stem}.{tail}")
            variants.add(f"{stem.removeprefix('base_model.model.')}.{tail}")
    variants |= {"base_model.model.score.weight", "base_model.model.classifier.bias", "score.weight",
                 "base_model.model.model.embed_tokens.base_layer.weight", "base_model.model.lm_head.base_layer.weight",
                 "base_model.model.lm_head.weight", "lora_A.weight", "weight"}
    for key in sorted(variants):
        if real["is_base_embedding_weights"](key):
            expected = "skip"
        else:
            try:
                _, is_a = real["parse_fine_tuned_lora_name"](key)
                expected = "parsed-A" if is_a else "parsed-B"
            except ValueError:
                expected = "refused"
        ours = classify_key(key)
        got = {"skip": "skip", None: "refused", "A": "parsed-A", "B": "parsed-B", "head": "parsed-B"}[ours]
        assert got == expected, key


def saved_keys(tmp_path):
    from vllm_helpers import tensors

    return list(tensors(saved_adapter(tmp_path / "keys", targets=("q_proj", "v_proj", "embed_tokens"))))


def test_adapterkit_folders_pass_and_edited_ones_fail(tmp_path):
    folder = saved_adapter(tmp_path / "a")
    assert check_for_vllm(folder).ok
    edit(folder, {"use_dora": True, "bias": "all"},
         add={"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(16)},
         drop=("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",))
    verdict = check_for_vllm(folder)
    assert verdict.rules() == {"use_dora", "bias", "key", "missing_key"}
    assert "model.layers.1.self_attn.v_proj" in str(next(f for f in verdict.findings if f.rule == "missing_key"))


def test_check_command(tmp_path, capsys):
    good = saved_adapter(tmp_path / "good", r=24)
    assert main(["check", "--for", "vllm", "--max-lora-rank", "32", str(good)]) == 0
    assert "ok: vLLM 0.33.0 loads" in capsys.readouterr().out
    assert main(["check", "--for", "vllm", str(good)]) == 1  # vLLM's default --max-lora-rank is 16
    out = capsys.readouterr().out
    assert "rank 24 is above --max-lora-rank 16" in out and "fix: start vLLM with --max-lora-rank 32" in out
    for bad_rank in (0, 2, 24, 1024, -8):
        assert main(["check", "--for", "vllm", "--max-lora-rank", str(bad_rank), str(good)]) == 2
        assert "one of 1, 8, 16" in capsys.readouterr().err
    assert main(["check", "--for", "vllm", str(tmp_path / "missing")]) == 2
    with pytest.raises(AdapterConfigError):
        check_for_vllm(good, max_lora_rank=12)


def test_unreadable_folders_are_typed_errors(tmp_path):
    from adapterkit.errors import AdapterError

    folder = saved_adapter(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    whole = weights.read_bytes()
    for cut in (0, 7, len(whole) // 2):
        weights.write_bytes(whole[:cut])
        with pytest.raises(AdapterError, match="adapter_model.safetensors"):
            check_for_vllm(folder)
    weights.write_bytes(whole)
    for text in ("{", "[]", "", "\xff"):
        (folder / "adapter_config.json").write_text(text, encoding="latin-1")
        with pytest.raises(AdapterConfigError, match="adapter_config.json"):
            check_for_vllm(folder)
