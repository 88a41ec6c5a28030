"""The store-backed LoRA resolver against vLLM's real `vllm.lora.resolver` and plugin loader.

vLLM 0.33 installed with `pip install --no-deps vllm==0.33.0` imports `vllm.lora.resolver`
on this CPU machine once `msgspec` is installed too (vllm/lora/request.py needs it); the
import takes ~2-6 s (vllm/__init__ imports torch). Without vLLM these tests skip, saying so.
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from vllm_helpers import edit, saved_adapter, tensors

from adapterkit.integrations.vllm.rules import check_for_vllm
from adapterkit.store import AdapterStore
from helpers import missing_tool

try:
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    missing_tool(f"vllm.lora.resolver does not import ({exc}); install vllm==0.33.0 with --no-deps and "
                f"msgspec==0.23.0", module_level=True)

from adapterkit.integrations.vllm.resolver import RESOLVER_NAME, StoreLoRAResolver

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture
def store(tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.put_folder(saved_adapter(tmp_path / "v1", seed=1), "reverse")
    store.put_folder(edit(saved_adapter(tmp_path / "v2", seed=2), {"bias": "all"}), "reverse")
    store.tag("reverse@1", "prod")
    return store


def resolve(resolver, name, base="HuggingFaceTB/SmolLM2-135M-Instruct"):
    return asyncio.run(resolver.resolve_lora(base, name))


def test_resolves_store_refs_to_loadable_folders(store, tmp_path):
    resolver = StoreLoRAResolver(store, tmp_path / "cache")
    assert isinstance(resolver, LoRAResolver)
    for ref, version in (("reverse@prod", 1), ("reverse@1", 1), ("reverse", 2), ("reverse@latest", 2)):
        request = resolve(resolver, ref)
        assert isinstance(request, LoRARequest) and request.lora_name == ref and request.lora_int_id > 0
        assert request.base_model_name == "HuggingFaceTB/SmolLM2-135M-Instruct"
        folder = Path(request.lora_path)
        assert folder == tmp_path / "cache" / f"reverse@{version}" and check_for_vllm(folder).ok
        stored = tensors(saved_adapter(tmp_path / f"expected{version}", seed=version))
        assert all(torch.equal(stored[k], v) for k, v in tensors(folder).items()) and stored.keys() == tensors(folder).keys()
    # Version 2 says bias "all" (which vLLM refuses) with no bias tensor: served after a lossless export.
    assert check_for_vllm(tmp_path / "cache" / "reverse@2").ok


def test_second_resolve_reuses_the_folder(store, tmp_path):
    resolver = StoreLoRAResolver(store, tmp_path / "cache")
    first = Path(resolve(resolver, "reverse@prod").lora_path)
    written = (first / "adapter_model.safetensors").stat().st_mtime_ns
    again = StoreLoRAResolver(store, tmp_path / "cache")  # another replica sharing the cache
    assert Path(resolve(again, "reverse@1").lora_path) == first
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == written
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["reverse@1"]  # no scratch left behind


@pytest.mark.parametrize("ref", ["nothing", "reverse@7", "reverse@staging", "bad name!", "reverse@", "../etc", "", "a@b@c"])
def test_unknown_or_malformed_refs_resolve_to_none(store, tmp_path, ref):
    resolver = StoreLoRAResolver(store, tmp_path / "cache")
    assert resolve(resolver, ref) is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_an_adapter_vllm_cannot_serve_resolves_to_none(store, tmp_path, caplog):
    store.put_folder(edit(saved_adapter(tmp_path / "dora"), {"init_lora_weights": "pissa"}), "pissa")
    resolver = StoreLoRAResolver(store, tmp_path / "cache")
    assert resolve(resolver, "pissa") is None
    assert "cannot be served by vLLM" in caplog.text and "PiSSA" in caplog.text
    assert not any((tmp_path / "cache").iterdir())


def test_entry_point_registers_with_vllms_plugin_loader(store, tmp_path, monkeypatch):
    """vLLM's own loader finds the entry point pyproject declares, and calling it registers the resolver."""
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"][DEFAULT_PLUGINS_GROUP]
    assert declared == {"adapterkit": "adapterkit.integrations.vllm:register"}
    # An installed distribution's metadata, as pip writes it, on the import path.
    dist = tmp_path / "site" / "adapterkit_plugin_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: adapterkit-plugin-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{DEFAULT_PLUGINS_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in declared.items()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("VLLM_PLUGINS", "adapterkit")
    monkeypatch.setenv("ADAPTERKIT_STORE", str(store.root))
    monkeypatch.setenv("ADAPTERKIT_VLLM_CACHE", str(tmp_path / "served"))
    monkeypatch.setattr(LoRAResolverRegistry, "resolvers", {})
    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    assert list(plugins) == ["adapterkit"]
    plugins["adapterkit"]()
    plugins["adapterkit"]()  # vLLM may load plugins more than once, in each process
    resolver = LoRAResolverRegistry.get_resolver(RESOLVER_NAME)
    assert isinstance(resolver, StoreLoRAResolver) and resolver.store.root == store.root
    assert Path(resolve(resolver, "reverse@prod").lora_path).parent == tmp_path / "served"


@pytest.mark.slow  # end to end in real processes
def test_adapterkit_never_needs_vllm(tmp_path):
    """Everything but the resolver module imports with vLLM hidden."""
    import subprocess

    code = ("import sys; sys.modules['vllm'] = None\n"
            "import adapterkit, adapterkit.integrations.vllm, adapterkit.integrations.vllm.export\n"
            "from adapterkit.cli.main import main; sys.exit(main(['check', '--for', 'vllm', sys.argv[1]]))")
    folder = saved_adapter(tmp_path / "a")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ok: vLLM 0.33.0 loads" in done.stdout


def test_replicas_resolving_at_once_share_one_folder(store, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    resolvers = [StoreLoRAResolver(AdapterStore(store.root), tmp_path / "cache") for _ in range(6)]
    with ThreadPoolExecutor(6) as pool:
        folders = set(pool.map(lambda resolver: resolver.materialise("reverse@prod"), resolvers))
    assert folders == {tmp_path / "cache" / "reverse@1"} and check_for_vllm(tmp_path / "cache" / "reverse@1").ok
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["reverse@1"]
