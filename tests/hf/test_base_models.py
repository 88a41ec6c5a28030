import socket

import pytest
import torch
from safetensors import safe_open

from adapterkit.errors import AdapterError
from adapterkit.hf import BaseModelNotFoundError, HubUnreachableError, load_base
from adapterkit.hf.cache_dir import cache_root, write_folder_atomically


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    # An empty HF cache and offline mode: the hub id cannot resolve anywhere.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))


def test_hub_id_offline_raises_typed_error_quickly(offline_hub, monkeypatch):
    # Quickly: without a single connection attempt (huggingface_hub's retries take ~25 s), counted
    # rather than timed, so a loaded machine cannot fail it.
    attempts = []

    def refuse(sock, address, *args):
        attempts.append(address)
        raise OSError("this test allows no network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    with pytest.raises(HubUnreachableError) as raised:
        load_base("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert attempts == []  # no network retries
    assert isinstance(raised.value, OSError) and isinstance(raised.value, AdapterError)
    message = str(raised.value)
    assert "unreachable" in message and "'smollm2'" in message and "local" in message


def test_missing_local_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BaseModelNotFoundError, match="does not exist"):
        load_base(str(missing))


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(BaseModelNotFoundError, match="config.json"):
        load_base(tmp_path)


def test_local_folder_round_trip_keeps_tied_embeddings(tmp_path, tiny_llama, smol_tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_base(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert tokenizer.pad_token_id is not None
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_llama(ids).logits)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("ADAPTERKIT_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "adapterkit"
    monkeypatch.setenv("ADAPTERKIT_HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home"
    monkeypatch.delenv("ADAPTERKIT_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_root() == tmp_path / "user" / ".cache" / "adapterkit"


def test_failed_cache_write_leaves_nothing_behind(tmp_path):
    final = tmp_path / "models" / "m"

    def half_written(folder):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_folder_atomically(final, half_written)
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


@pytest.mark.slow
def test_smollm2_converts_once_then_reloads_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAPTERKIT_HOME", str(tmp_path))
    model, tokenizer = load_base("smollm2")
    folder = tmp_path / "models" / "smollm2"
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == ["smollm2"]  # no temp left
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in (folder / "config.json").read_text()
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert "lm_head.weight" not in weights.keys()  # stored once, tied on load

    converted = [(f.name, f.stat().st_ino, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())]
    again, tokenizer_again = load_base("smollm2")
    # Reloaded from the converted folder: no file was written again (a conversion replaces them).
    assert [(f.name, f.stat().st_ino, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())] == converted
    assert again.lm_head.weight is again.model.embed_tokens.weight
    assert again.model.embed_tokens.weight.dtype == torch.float32
    chat = [{"role": "user", "content": "hi"}]
    assert tokenizer_again.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(chat, tokenize=False)
    ids = torch.tensor([[1, 9690, 198, 2683]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
