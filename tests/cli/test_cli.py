"""The `adapterkit` command end to end, in a real subprocess where it matters, on a tiny base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.cli.main import COMMANDS, build_parser, main
from helpers import logits, max_diff, randomize_adapter, tiny_gpt2


def tiny_llama_wider():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adapterkit.cli.main", *argv], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def trained_adapter(tmp_path, base_dir):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_adapter(model)
    model.add_adapter("second", LoraConfig(r=2, target_modules=["o_proj"]))
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    return folder, model


def test_every_subcommand_has_help():
    parser = build_parser()
    names = list(COMMANDS) + ["store"]
    for name in names:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([name, "--help"])
        assert stop.value.code == 0


def test_inspect_reports_rank_targets_bytes_base_and_subadapters(trained_adapter, capsys):
    folder, model = trained_adapter
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rank"] == 4 and report["target_modules"] == ["q_proj", "v_proj"]
    # 2 layers x (q: 4x16 + 16x4, v: 4x16 + 8x4; v projects to one 8-wide kv head)
    assert report["parameters"] == 2 * (128 + 96)
    assert report["parameters"] == sum(t.numel() for t in model.adapter_state_dict("default").values())
    assert report["adapted_modules"] == 4
    assert report["weights_bytes"] == (folder / "adapter_model.safetensors").stat().st_size
    assert len(report["weights_sha256"]) == 64
    assert report["base_fingerprint"]
    assert [s["rank"] for s in report["sub_adapters"]] == [2]


@pytest.mark.slow  # end to end in real processes
def test_verify_accepts_its_base_and_lists_every_mismatch_on_another(trained_adapter, base_dir, tmp_path):
    folder, _ = trained_adapter
    ok = run_cli("verify", str(folder), "--base", str(base_dir))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    other = tmp_path / "other-base"  # same family, other shapes: every adapted module mismatches
    tiny_llama_wider().save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((base_dir / name).read_bytes())
    bad = run_cli("verify", str(folder), "--base", str(other))
    assert bad.returncode == 1
    # Every mismatch on stdout (2 layers x q, v x A, B, plus the other base), one line on stderr.
    shapes = [line for line in bad.stdout.splitlines() if line.startswith("problem:") and "this base needs" in line]
    assert len(shapes) == 8 and any("q_proj" in x for x in shapes) and any("v_proj" in x for x in shapes), bad.stdout
    assert "trained on base" in bad.stdout
    assert bad.stderr.count("\n") == 1 and "9 problem(s)" in bad.stderr, bad.stderr


@pytest.mark.slow  # end to end in real processes
def test_merge_writes_a_model_transformers_loads_alone(trained_adapter, base_dir, tmp_path):
    folder, model = trained_adapter
    model.set_adapter("default")
    expected = logits(model)
    out = tmp_path / "merged"
    done = run_cli("merge", "--base", str(base_dir), "--adapter", str(folder), "--out", str(out))
    assert done.returncode == 0, done.stderr
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert max_diff(logits(plain), expected) < 1e-5
    assert not any("lora" in name for name, _ in plain.named_modules())


def test_convert_turns_legacy_bin_into_safetensors_with_same_tensors(tmp_path):
    model = get_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    randomize_adapter(model)
    folder = tmp_path / "legacy"
    model.save_pretrained(folder, safe_serialization=False)
    assert (folder / "adapter_model.bin").exists()
    assert main(["convert", str(folder)]) == 0
    reloaded = AdapterModel.from_pretrained(tiny_gpt2(), folder)
    assert max_diff(logits(reloaded), logits(model)) == 0.0


@pytest.mark.slow  # end to end in real processes
def test_train_then_load_the_output(base_dir, train_jsonl, tmp_path):
    out = tmp_path / "trained"
    done = run_cli("train", "--base", str(base_dir), "--data", str(train_jsonl), "--targets", "q_proj,v_proj",
                   "--r", "4", "--alpha", "8", "--steps", "3", "--batch-size", "4", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "adapter saved" in done.stdout
    model = AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    assert max_diff(logits(model), logits(base)) > 0  # three AdamW steps moved B off zero


@pytest.mark.slow  # end to end in real processes
@pytest.mark.parametrize("argv, fragment", [
    (["inspect", "/no/such/adapter"], "does not exist"),
    (["convert", "/no/such/adapter"], "does not exist"),
    (["convert", "/"], "holds no adapter_model.bin"),
    (["train", "--data", "/no/such.jsonl", "--output", "/tmp/x"], "no/such.jsonl"),
])
def test_bad_input_is_one_line_and_nonzero(argv, fragment):
    done = run_cli(*argv)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], done.stderr


def _edited_copy(folder, dst, config_edit=None, tensor_edit=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    config = json.loads((folder / "adapter_config.json").read_text())
    if config_edit:
        config_edit(config)
    (dst / "adapter_config.json").write_text(json.dumps(config, allow_nan=True))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    if tensor_edit:
        tensor_edit(tensors)
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata=metadata)
    return dst


@pytest.mark.parametrize("edit, field", [
    (dict(rank_pattern=[4]), "rank_pattern"),
    (dict(target_modules=7), "target_modules"),
    (dict(target_modules="q_proj("), "target_modules"),
    (dict(lora_alpha="16"), "lora_alpha"),
])
def test_inspect_and_verify_name_the_bad_field_in_one_line(trained_adapter, base_dir, tmp_path, capsys, edit, field):
    folder, _ = trained_adapter
    bad = _edited_copy(folder, tmp_path / "bad", config_edit=lambda c: c.update(edit))
    for argv in (["inspect", str(bad)], ["verify", str(bad), "--base", str(base_dir)]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"field {field}" in err, err


def test_nan_weights_fail_verify_and_inspect_unless_allowed(trained_adapter, base_dir, tmp_path, capsys):
    folder, _ = trained_adapter

    def poison(tensors):
        key = sorted(tensors)[-1]
        tensors[key] = tensors[key].clone().fill_(float("nan"))

    bad = _edited_copy(folder, tmp_path / "bad", tensor_edit=poison)
    assert main(["verify", str(bad), "--base", str(base_dir)]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "NaN or inf" in captured.err and "holds NaN or inf" in captured.out
    assert main(["inspect", str(bad)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["verify", str(bad), "--base", str(base_dir), "--allow-nonfinite"]) == 0
    assert main(["inspect", str(bad), "--json", "--allow-nonfinite"]) == 0


def test_int_tensors_fail_verify_as_they_fail_load(trained_adapter, base_dir, tmp_path, capsys):
    folder, _ = trained_adapter

    def to_int(tensors):
        key = sorted(tensors)[0]
        tensors[key] = (tensors[key] * 100).to(torch.int8)

    bad = _edited_copy(folder, tmp_path / "bad", tensor_edit=to_int)
    assert main(["verify", str(bad), "--base", str(base_dir)]) == 1
    assert "int8" in capsys.readouterr().err
