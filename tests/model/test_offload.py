"""Adapters on bases placed by device_map / offloaded by accelerate (core/placement.py, model/offload.py).

Every base here is the same saved tiny Llama (or GPT-2), loaded four ways that leave weights on the
meta device behind accelerate's AlignDevicesHook: transformers' device_map="auto" with a small
max_memory and an offload folder, an explicit device_map with "disk" entries, accelerate's
cpu_offload and disk_offload (offload_buffers=True). Each is compared with the same adapters on
the same base loaded plainly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import accelerate
import pytest
import torch
from transformers import AutoModelForCausalLM

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.core import placement
from adapterkit.core.injection import lora_modules
from adapterkit.errors import AdapterStateError, OffloadedWeightError
from adapterkit.ops.merge import export_merged
from helpers import input_ids, max_diff, randomize_adapter, tiny_gpt2, tiny_llama

TOL = 1e-5
LORA_TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head", "embed_tokens"]
DORA_TARGETS = ["q_proj", "o_proj", "up_proj"]
MIXED = ["default", "dora", "__base__", "dora"]
IDS = input_ids(batch=len(MIXED))


def _auto(folder: Path, scratch: Path):
    # ~20 kB of "cpu": the embeddings stay resident, everything after them goes to disk.
    return AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": 20_000},
                                                offload_folder=scratch)


def _explicit_disk(folder: Path, scratch: Path):
    device_map = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "disk"}
    return AutoModelForCausalLM.from_pretrained(folder, device_map=device_map, offload_folder=scratch)


def _cpu_offload(folder: Path, scratch: Path):
    return accelerate.cpu_offload(AutoModelForCausalLM.from_pretrained(folder), execution_device="cpu",
                                  offload_buffers=True)


def _disk_offload(folder: Path, scratch: Path):
    return accelerate.disk_offload(AutoModelForCausalLM.from_pretrained(folder), scratch, execution_device="cpu",
                                   offload_buffers=True)


PLACEMENTS = {"device_map_auto": _auto, "device_map_disk": _explicit_disk, "cpu_offload": _cpu_offload,
              "disk_offload": _disk_offload}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on a loaded machine its OpenMP
    spin-waits cost several times the work itself (this file: 2 s of CPU, 29-42 s with 2 threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny Llama base, and a folder with two adapters trained on it: a LoRA on attention,
    MLP, lm_head and the embeddings, and a DoRA."""
    root = tmp_path_factory.mktemp("offload")
    tiny_llama().save_pretrained(root / "base")
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    model.add_adapter("dora", LoraConfig(r=2, lora_alpha=4, target_modules=DORA_TARGETS, use_dora=True))
    randomize_adapter(model, seed=5, std=0.2)
    model.save_pretrained(root / "adapters")
    return root


@pytest.fixture(scope="module")
def expected(saved):
    """The outputs (and fingerprint) of the adapters on the plainly loaded base: what every placement must give."""
    resident = _resident(saved)
    return _outputs(resident, IDS), resident.base_fingerprint.digest


def _load(base, root: Path, trainable: bool = False) -> AdapterModel:
    model = AdapterModel.from_pretrained(base, root / "adapters", is_trainable=trainable, strict_base=True)
    model.load_adapter(root / "adapters" / "dora", "dora", is_trainable=trainable, strict_base=True)
    return model.eval()


def _resident(root: Path, trainable: bool = False) -> AdapterModel:
    return _load(AutoModelForCausalLM.from_pretrained(root / "base"), root, trainable)


def _offloaded(root: Path, how: str, scratch: Path, trainable: bool = False) -> AdapterModel:
    base = PLACEMENTS[how](root / "base", scratch)
    offloaded = [n for n, m in base.named_modules() if placement.is_offloaded(m)]
    assert any(n.endswith("q_proj") for n in offloaded), "the test needs offloaded target modules"
    return _load(base, root, trainable)


def _outputs(model: AdapterModel, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {}
    with torch.no_grad():
        for name in ("default", "dora"):
            model.set_adapter(name)
            out[name] = model(input_ids=ids).logits
        out["mixed"] = model(input_ids=ids, adapter_names=MIXED).logits
        with model.disable_adapter():
            out["base"] = model(input_ids=ids).logits
    model.set_adapter("default")
    return out


# device_map_disk runs in the merge, tie and base-layer tests below.
@pytest.mark.parametrize("how", ["device_map_auto", "cpu_offload", "disk_offload"])
def test_adapters_run_on_offloaded_bases_as_on_the_resident_one(saved, expected, how, tmp_path):
    model = _offloaded(saved, how, tmp_path)
    for path, lora in lora_modules(model.get_base_model()).items():
        device = placement.execution_device(lora.base)
        for tensors in (lora.tensors_of(n) for n in lora.info):
            assert all(t.device == device and t.device.type != "meta" for t in tensors.values()), path
    outputs, fingerprint = expected
    got = _outputs(model, IDS)
    for key in outputs:
        assert max_diff(got[key], outputs[key]) <= TOL, key
    assert max_diff(got["default"], got["base"]) > 1e-2  # the adapters do something
    assert model.base_fingerprint.digest == fingerprint  # the same base, offloaded or not


@pytest.mark.parametrize("how", ["device_map_auto"])  # disk and resident modules; the forward test covers the rest
def test_a_training_step_gives_the_resident_gradients_and_saves(saved, how, tmp_path):
    ids = input_ids(batch=len(MIXED))
    grads = []
    models = [_resident(saved, trainable=True), _offloaded(saved, how, tmp_path, trainable=True)]
    for model in models:
        model.set_adapter(["default", "dora"])
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(".lora." in n for n in trained)
        assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
        grads.append({n: p.grad.clone() for n, p in trained.items()})
        torch.optim.SGD(list(trained.values()), lr=0.5).step()
        model.eval()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert max_diff(grads[1][name], grads[0][name]) <= TOL, name
    after = _outputs(models[1], ids)
    models[1].save_pretrained(tmp_path / "trained")
    reloaded = _load_folder(saved, tmp_path / "trained")
    for key, value in _outputs(reloaded, ids).items():
        assert max_diff(value, after[key]) <= TOL, key


def _load_folder(saved: Path, folder: Path) -> AdapterModel:
    model = AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved / "base"), folder)
    model.load_adapter(folder / "dora", "dora")
    return model.eval()


def _file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("how", ["device_map_disk", "cpu_offload"])
def test_merge_goes_through_the_offloaded_weights_and_unmerge_restores_them_exactly(saved, how, tmp_path):
    ids = input_ids(batch=2)
    resident, model = _resident(saved), _offloaded(saved, how, tmp_path / "scratch")
    hooks = {p: placement.offload_hook(lora.base) for p, lora in lora_modules(model.get_base_model()).items()}
    maps = {p: hook.weights_map for p, hook in hooks.items() if hook is not None}
    assert maps
    files_before = _file_digests(saved / "base"), _file_digests(tmp_path / "scratch")
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for names in (["default"], ["default", "dora"]):  # additive; then DoRA's rescaling, unmerged first
            resident.merge_adapter(names)
            model.merge_adapter(names)
            assert model.merged_adapters == names
            assert max_diff(model(input_ids=ids).logits, resident(input_ids=ids).logits) <= TOL, names
            resident.unmerge_adapter()
            model.unmerge_adapter()
            # Offloaded modules: the hook has its own map back, so their weights are exactly as before
            # (resident ones, layers.0 in device_map_disk, are unmerged by subtraction, as always).
            assert all(hooks[p].weights_map is m for p, m in maps.items())
            after = model(input_ids=ids).logits
            assert torch.equal(after, before) if len(maps) == len(hooks) else max_diff(after, before) <= TOL
    # Neither the checkpoint nor the offload folder behind the maps was ever written.
    assert (_file_digests(saved / "base"), _file_digests(tmp_path / "scratch")) == files_before


def test_merge_and_unload_then_save_writes_the_merged_offloaded_weights(saved, tmp_path):
    ids = input_ids(batch=2)
    resident, model = _resident(saved), _offloaded(saved, "device_map_disk", tmp_path / "scratch")
    with torch.no_grad():
        expected = resident.merge_and_unload(adapter_names=["default", "dora"])(input_ids=ids).logits
        plain = model.merge_and_unload(adapter_names=["default", "dora"])
        assert not lora_modules(plain)
        assert max_diff(plain(input_ids=ids).logits, expected) <= TOL
        plain.save_pretrained(tmp_path / "merged")  # transformers reads offloaded weights through the hooks
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        assert max_diff(reloaded(input_ids=ids).logits, expected) <= TOL


def test_export_merged_from_an_offloaded_base_equals_the_resident_export(saved, tmp_path):
    ids = input_ids(batch=2)
    export_merged(_resident(saved), tmp_path / "resident", adapter_names=["default", "dora"])
    model = _offloaded(saved, "disk_offload", tmp_path / "scratch")
    with torch.no_grad():
        before = model(input_ids=ids).logits
    export_merged(model, tmp_path / "offloaded", adapter_names=["default", "dora"])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tmp_path / "resident")(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(tmp_path / "offloaded")(input_ids=ids).logits
        assert max_diff(a, b) <= TOL
        assert torch.equal(model(input_ids=ids).logits, before)  # the live model is untouched


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_reading_inits_read_and_write_through_the_hook(saved, init, tmp_path):
    ids = input_ids(batch=2)
    config = LoraConfig(r=2, target_modules=["q_proj", "down_proj"], init_lora_weights=init)
    resident = get_peft_model(AutoModelForCausalLM.from_pretrained(saved / "base"), config).eval()
    model = get_peft_model(_disk_offload(saved / "base", tmp_path), LoraConfig.from_dict(config.to_dict())).eval()
    ours, theirs = lora_modules(model.get_base_model()), lora_modules(resident.get_base_model())
    for path, lora in ours.items():
        assert max_diff(lora.lora_A["default"], theirs[path].lora_A["default"]) <= TOL, path
        residual = placement.tensor_values(lora.base)
        assert max_diff(residual, theirs[path].base.weight) <= TOL, path
    with torch.no_grad():
        assert max_diff(model(input_ids=ids).logits, resident(input_ids=ids).logits) <= TOL


def test_dora_on_conv1d_with_a_bias_offloaded(tmp_path):
    """GPT-2: Conv1D weights stored (in, out), and biases, which DoRA's correction reads through the hook."""
    ids = input_ids(batch=3)
    config = LoraConfig(r=2, target_modules=["c_attn", "c_proj"], use_dora=True, init_lora_weights=False)
    resident = get_peft_model(tiny_gpt2(), config)
    randomize_adapter(resident, seed=9, std=0.2)
    resident.save_pretrained(tmp_path / "adapter")
    tiny_gpt2().save_pretrained(tmp_path / "base")
    base = _disk_offload(tmp_path / "base", tmp_path / "scratch")
    assert placement.is_offloaded(base.transformer.h[0].attn.c_attn, "bias")
    # strict_base: the tied lm_head that disk_offload splits off the embeddings is still the same base.
    model = AdapterModel.from_pretrained(base, tmp_path / "adapter", strict_base=True).eval()
    resident.eval()
    with torch.no_grad():
        assert max_diff(model(input_ids=ids).logits, resident(input_ids=ids).logits) <= TOL
        names = ["default", "__base__", "default"]
        assert max_diff(model(input_ids=ids, adapter_names=names).logits,
                        resident(input_ids=ids, adapter_names=names).logits) <= TOL


# Refusals: everything an adapter would train *inside* an offloaded module, for every placement.
REFUSED = [
    {"target_modules": ["q_proj"], "bias": "lora_only"},
    {"target_modules": ["q_proj"], "bias": "all"},
    {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    {"target_modules": ["q_proj"], "modules_to_save": ["down_proj"]},
]


@pytest.mark.parametrize("how", ["device_map_auto", "cpu_offload"])
def test_base_tensors_trained_in_place_are_refused_on_offloaded_modules(saved, how, tmp_path):
    gpt2_bias = tiny_gpt2()  # Llama's projections have no bias: GPT-2's do
    gpt2_bias.save_pretrained(tmp_path / "gpt2")
    for base_folder, fields in [(saved / "base", f) for f in REFUSED] + [
            (tmp_path / "gpt2", {"target_modules": ["c_attn"], "bias": b}) for b in ("lora_only", "all")]:
        if fields.get("bias") and base_folder == saved / "base":
            continue  # a Llama has no bias for these to train: nothing to refuse
        base = PLACEMENTS[how](base_folder, tmp_path / "scratch")
        model = AdapterModel(base)
        modules_before = [n for n, _ in base.named_modules()]
        with pytest.raises(OffloadedWeightError, match="offloaded"):
            model.add_adapter("a", LoraConfig(r=2, **fields))
        assert not model.peft_config and [n for n, _ in base.named_modules()] == modules_before, fields
        # load_adapter (and so `adapterkit verify`, which runs the same check_load) refuses it too.
        resident = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(r=2, **fields))
        resident.save_pretrained(tmp_path / "refused")
        with pytest.raises(OffloadedWeightError):
            model.load_adapter(tmp_path / "refused", "a")
        assert not model.peft_config and [n for n, _ in base.named_modules()] == modules_before, fields


def test_a_meta_weight_no_hook_explains_is_refused(saved):
    with torch.device("meta"):
        base = tiny_llama()
    with pytest.raises(OffloadedWeightError, match="meta device"):
        get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))


# On GPUs, "cpu" in a device_map offloads too: the weights wait on the meta device, in a CPU weights map,
# and the module runs on the main GPU. Run where the GPUs are; this is skipped on a CPU-only machine.
GPU_MAPS = {
    1: {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu", "model.norm": 0,
        "model.rotary_emb": 0, "lm_head": "disk"},
    2: {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1,
        "model.rotary_emb": 1, "lm_head": "cpu"},
}


@pytest.mark.parametrize("gpus", sorted(GPU_MAPS))
def test_gpu_placement_puts_factors_on_each_module_s_execution_device(saved, gpus, tmp_path):
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"this placement needs {gpus} CUDA device(s); {torch.cuda.device_count()} here")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ids = IDS.to("cuda:0")
    base = AutoModelForCausalLM.from_pretrained(saved / "base", device_map=GPU_MAPS[gpus], offload_folder=tmp_path)
    assert placement.is_offloaded(base.lm_head)
    model = _load(base, saved)
    devices = {}
    for path, lora in lora_modules(base).items():
        devices[path] = placement.execution_device(lora.base)
        for name in lora.info:
            assert all(t.device == devices[path] for t in lora.tensors_of(name).values()), path
    assert devices["lm_head"] == torch.device("cuda", 0)  # its weight is on meta: the hook says where it runs
    assert set(devices.values()) == {torch.device("cuda", i) for i in range(gpus)}
    resident = _resident(saved).to("cuda:0")
    expected, got = _outputs(resident, ids), _outputs(model, ids)
    for key in expected:
        assert max_diff(got[key].to("cuda:0"), expected[key]) <= TOL, key
    with torch.no_grad():
        resident.merge_adapter(["default", "dora"])
        model.merge_adapter(["default", "dora"])
        assert max_diff(model(input_ids=ids).logits.to("cuda:0"), resident(input_ids=ids).logits) <= TOL
        model.unmerge_adapter()
        assert max_diff(model(input_ids=ids).logits, got["default"]) <= TOL


def test_a_tied_weight_stays_tied_for_merges_once_offloaded(tmp_path):
    """accelerate's hooks give lm_head and the embeddings their own meta tensors after a forward: the tie
    is found from the model's declared ties, and merging into it is refused unless untied, as resident."""
    ids = input_ids(batch=2)
    tiny_llama(tie_word_embeddings=True).save_pretrained(tmp_path / "base")
    config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    resident = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), config).eval()
    resident.save_pretrained(tmp_path / "adapter")
    base = _explicit_disk(tmp_path / "base", tmp_path / "scratch")
    model = AdapterModel.from_pretrained(base, tmp_path / "adapter", strict_base=True).eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits  # after this forward, identity no longer shows the tie
        with pytest.raises(AdapterStateError, match="tied"):
            model.merge_adapter()
        assert not model.merged_adapters and torch.equal(model(input_ids=ids).logits, before)
        with pytest.raises(AdapterStateError, match="tied"):
            get_peft_model(model.unload(), LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights="olora"))
        model = AdapterModel.from_pretrained(model.unload(), tmp_path / "adapter").eval()
        with pytest.warns(UserWarning, match="Untied"):
            resident.merge_adapter(untie_weights=True)
            model.merge_adapter(untie_weights=True)
        assert max_diff(model(input_ids=ids).logits, resident(input_ids=ids).logits) <= TOL
        model.merge_and_unload().save_pretrained(tmp_path / "merged")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(input_ids=ids).logits
        assert max_diff(reloaded, resident.merge_and_unload()(input_ids=ids).logits) <= TOL


def test_a_saved_base_layer_replaces_the_offloaded_weight_in_memory_only(saved, tmp_path):
    """PEFT's save_embedding_layers puts a full base weight in the file; on an offloaded embedding it is
    written to the hook's in-memory overlay, not into the checkpoint behind it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ids = input_ids(batch=2)
    source = saved / "adapters" / "adapter_model.safetensors"
    with safe_open(source, "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    embedding = tiny_llama().model.embed_tokens.weight.detach()
    tensors["base_model.model.model.embed_tokens.base_layer.weight"] = embedding + 0.25
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((saved / "adapters" / "adapter_config.json").read_bytes())
    save_file(tensors, folder / "adapter_model.safetensors", metadata=metadata)
    checkpoint = _file_digests(saved / "base")
    outputs = []
    for base in (AutoModelForCausalLM.from_pretrained(saved / "base"), _explicit_disk(saved / "base", tmp_path / "s")):
        with pytest.warns(UserWarning, match="replaces the base weight"):
            model = AdapterModel.from_pretrained(base, folder).eval()
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert placement.is_offloaded(base.model.embed_tokens)
    assert max_diff(placement.tensor_values(base.model.embed_tokens), embedding + 0.25) == 0
    assert max_diff(outputs[1], outputs[0]) <= TOL
    assert _file_digests(saved / "base") == checkpoint


def test_the_trainer_trains_an_adapter_on_an_offloaded_base_as_on_the_resident_one(tmp_path):
    """adapterkit's own trainer: inputs go where the adapter's factors are, never to meta."""
    from adapterkit.training.data import ChatExample
    from adapterkit.training.trainer import TrainConfig, train
    from helpers import tiny_llama_for, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_llama_for(tokenizer).save_pretrained(tmp_path / "base")
    examples = [ChatExample.from_prompt(f"w{i} w{i + 1}", f"w{i + 2}") for i in range(8)]
    config = TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False)
    results, adapters = [], []
    for base in (AutoModelForCausalLM.from_pretrained(tmp_path / "base"), _auto(tmp_path / "base", tmp_path / "s")):
        torch.manual_seed(0)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        results.append(train(model, tokenizer, examples, config).losses)
        adapters.append(model.adapter_state_dict())
    assert placement.is_offloaded(base.model.layers[1].self_attn.q_proj)
    assert max(abs(a - b) for a, b in zip(*results)) <= TOL
    assert all(max_diff(adapters[0][k], adapters[1][k]) <= TOL for k in adapters[0])
