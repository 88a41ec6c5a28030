"""PEFT's adapter folder on disk: layout, atomic writes, safe reads, actionable errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import adapterkit.io.folder as folder_io
from adapterkit import (
    AdapterConfigNotFoundError,
    AdapterFolderNotFoundError,
    AdapterModel,
    AdapterWeightsNotFoundError,
    CorruptAdapterFileError,
    LoraConfig,
    get_peft_model,
)
from adapterkit.io.folder import read_adapter_folder
from helpers import logits, max_diff, randomize_adapter, tiny_llama


def two_adapter_model(seed: int = 4):
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.add_adapter("other", LoraConfig(r=3, lora_alpha=3, target_modules=["v_proj"]))
    randomize_adapter(model, seed=seed)
    return model


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_layout_default_at_root_others_in_subfolders(tmp_path):
    two_adapter_model().save_pretrained(tmp_path / "out")
    assert sorted(tree(tmp_path / "out")) == [
        "adapter_config.json", "adapter_model.safetensors",
        "other/adapter_config.json", "other/adapter_model.safetensors"]
    config = json.loads((tmp_path / "out" / "other" / "adapter_config.json").read_text())
    assert config["r"] == 3 and config["target_modules"] == ["v_proj"]
    assert list(config) == sorted(config)
    with safe_open(str(tmp_path / "out" / "adapter_model.safetensors"), framework="pt") as handle:
        assert handle.metadata()["format"] == "pt"
        assert all(k.startswith("base_model.model.") and ".default" not in k for k in handle.keys())


def test_selected_adapters_saves_only_those(tmp_path):
    model = two_adapter_model()
    model.save_pretrained(tmp_path / "only", selected_adapters=["other"])
    assert sorted(tree(tmp_path / "only")) == ["other/adapter_config.json", "other/adapter_model.safetensors"]


def test_saved_tensors_are_compact_copies(tmp_path):
    """Parameters are views of a packed tensor; the file must hold just their bytes."""
    model = two_adapter_model()
    model.save_pretrained(tmp_path / "out")
    files = read_adapter_folder(tmp_path / "out")
    assert files.tensors.keys() == model.adapter_state_dict("default").keys()
    for key, tensor in model.adapter_state_dict("default").items():
        assert torch.equal(files.tensors[key], tensor)
    expected_bytes = sum(t.numel() * 4 for t in files.tensors.values())
    assert os.path.getsize(tmp_path / "out" / "adapter_model.safetensors") < expected_bytes + 4096


def test_save_replaces_an_existing_folder_whole(tmp_path):
    target = tmp_path / "out"
    two_adapter_model(seed=1).save_pretrained(target)
    (target / "stray.txt").write_text("from before")
    single = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    randomize_adapter(single, seed=2)
    single.save_pretrained(target)
    assert sorted(tree(target)) == ["adapter_config.json", "adapter_model.safetensors"]
    reloaded = AdapterModel.from_pretrained(tiny_llama(), target)
    assert max_diff(logits(reloaded), logits(single)) == 0.0
    assert leftovers(tmp_path, "out") == []


def _crash_on_second_file(monkeypatch):
    real = folder_io.save_file
    calls = []

    def flaky(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) > 1:
            raise OSError("disk full (simulated)")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(folder_io, "save_file", flaky)
    return calls


def test_crash_mid_save_leaves_no_target_and_no_loadable_temp(tmp_path, monkeypatch):
    calls = _crash_on_second_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        two_adapter_model().save_pretrained(tmp_path / "out")
    assert len(calls) == 2
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path, "out") == []


def test_crash_mid_save_keeps_the_previous_complete_version(tmp_path, monkeypatch):
    target = tmp_path / "out"
    first = two_adapter_model(seed=1)
    first.save_pretrained(target)
    before = tree(target)
    calls = _crash_on_second_file(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        two_adapter_model(seed=2).save_pretrained(target)
    assert len(calls) == 2
    assert tree(target) == before
    assert leftovers(tmp_path, "out") == []
    monkeypatch.undo()
    reloaded = AdapterModel.from_pretrained(tiny_llama(), target)
    assert max_diff(logits(reloaded), logits(first)) == 0.0


def test_legacy_bin_round_trip(tmp_path):
    model = two_adapter_model()
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    reloaded = AdapterModel.from_pretrained(tiny_llama(), tmp_path / "bin")
    assert max_diff(logits(reloaded), logits(model)) == 0.0


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_legacy_bin_does_not_execute(tmp_path):
    good = tmp_path / "good"
    get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(good)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "adapter_config.json").write_bytes((good / "adapter_config.json").read_bytes())
    marker = tmp_path / "pwned"
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": _Payload(str(marker))}
    torch.save(state, str(evil / "adapter_model.bin"))
    assert not marker.exists()
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(CorruptAdapterFileError) as info:
        model.load_adapter(evil, adapter_name="evil")
    assert "adapter_model.bin" in str(info.value)
    assert not marker.exists()
    assert list(model.peft_config) == ["default"]


def test_unpickling_the_payload_really_would_run_code(tmp_path):
    """Guards the test above: the payload is live, so its not running means something."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(str(marker)))).close()
    assert marker.exists()


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(AdapterFolderNotFoundError) as info:
        read_adapter_folder(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value)


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "file.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(AdapterFolderNotFoundError, match="is a file"):
        read_adapter_folder(path)


def test_missing_config_lists_the_folder(tmp_path):
    two_adapter_model().save_pretrained(tmp_path / "out")
    (tmp_path / "out" / "adapter_config.json").unlink()
    with pytest.raises(AdapterConfigNotFoundError) as info:
        read_adapter_folder(tmp_path / "out")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "adapter_config.json" in message and "other/" in message and "sub-folder" in message


def test_missing_weights_lists_the_folder(tmp_path):
    two_adapter_model().save_pretrained(tmp_path / "out")
    (tmp_path / "out" / "adapter_model.safetensors").unlink()
    (tmp_path / "out" / "notes.txt").write_text("hi")
    with pytest.raises(AdapterWeightsNotFoundError) as info:
        read_adapter_folder(tmp_path / "out")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / "out") in message
    assert "adapter_config.json" in message and "notes.txt" in message and "other/" in message


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_safetensors_is_corrupt(tmp_path, keep):
    two_adapter_model().save_pretrained(tmp_path / "out")
    weights = tmp_path / "out" / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: max(1, int(len(data) * keep))])
    with pytest.raises(CorruptAdapterFileError) as info:
        read_adapter_folder(tmp_path / "out")
    assert str(weights) in str(info.value) and "again" in str(info.value)


def test_bin_with_non_tensor_values_is_refused(tmp_path):
    two_adapter_model().save_pretrained(tmp_path / "out", safe_serialization=False)
    torch.save({"a": 1}, str(tmp_path / "out" / "adapter_model.bin"))
    with pytest.raises(CorruptAdapterFileError):
        read_adapter_folder(tmp_path / "out")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_saved_files_get_the_mode_the_umask_gives(tmp_path, umask):
    """As a plain open() would: a server running as another user can read the weights (PEFT's
    safetensors files get 0600 from safetensors' temp-file-and-rename; ours do not)."""
    from adapterkit.ops.convert import convert_folder

    previous = os.umask(umask)
    try:
        model = two_adapter_model()
        model.save_pretrained(tmp_path / "out")
        model.save_pretrained(tmp_path / "legacy", safe_serialization=False)
        convert_folder(tmp_path / "legacy")
    finally:
        os.umask(previous)
    wanted = 0o666 & ~umask
    files = [p for folder in ("out", "legacy") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert len(files) == 10  # 2 adapters x (config + weights) in each, + 2 converted safetensors
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(wanted) for p in files}


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
@pytest.mark.parametrize("kind", ["directory", "dangling link", "link loop", "fifo"])
def test_a_name_that_is_not_a_file_is_a_typed_error_naming_it(tmp_path, name, kind):
    from adapterkit import AdapterFileUnreadableError

    two_adapter_model().save_pretrained(tmp_path / "out")
    path = tmp_path / "out" / name
    path.unlink()
    if kind == "directory":
        path.mkdir()
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "nowhere")
    elif kind == "link loop":
        path.symlink_to(path)
    else:
        os.mkfifo(path)  # opening it would block: it must be refused without opening
    with pytest.raises(AdapterFileUnreadableError) as info:
        read_adapter_folder(tmp_path / "out")
    assert name in str(info.value) and "not a file" in str(info.value)


@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_file_that_cannot_be_opened_is_a_typed_error_naming_it(tmp_path, monkeypatch, name):
    """Mode 000 where that denies reading; as root (which reads anything) the denial is injected."""
    import adapterkit.core.config as config_module
    from adapterkit import AdapterFileUnreadableError

    two_adapter_model().save_pretrained(tmp_path / "out")
    path = tmp_path / "out" / name
    os.chmod(path, 0)
    if os.geteuid() == 0:
        real_open = open

        def denying_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(folder_io, "open", denying_open, raising=False)
        monkeypatch.setattr(config_module, "open", denying_open, raising=False)
    with pytest.raises(AdapterFileUnreadableError) as info:
        read_adapter_folder(tmp_path / "out")
    assert name in str(info.value) and "Permission denied" in str(info.value)
