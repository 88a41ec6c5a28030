"""A long-running process cycles thousands of distinct adapters through a bounded resident set.

Row ids of deleted adapters are handed out again, so routing tables, slot tables,
packs and memory stay bounded; adapters still resident keep their outputs, and an
adapter that inherits a reused id (and whose predecessor targeted other modules)
computes exactly what it computes alone.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import random

import psutil
import pytest
import torch

from adapterkit import AdapterModel, LoraConfig, get_peft_model
from adapterkit.errors import AdapterCapacityError
from helpers import input_ids, max_diff, randomize_adapter, tiny_llama

ROUNDS = 2000
RESIDENT = 8  # cycled adapters resident at once, beside the two keepers
# Ranks and target sets differ, so packs of several ranks fill and empty, and an id's
# next holder often skips a module its previous holder used.
RECIPES = [
    (2, ["q_proj", "v_proj"]),
    (4, ["q_proj", "v_proj", "down_proj"]),
    (8, ["v_proj"]),
    (4, ["k_proj", "o_proj", "up_proj"]),
    (2, ["gate_proj", "down_proj", "q_proj"]),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cycled")
    paths = []
    for i, (rank, targets) in enumerate(RECIPES):
        model = get_peft_model(tiny_llama(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
        randomize_adapter(model, seed=10 + i, std=0.3)
        paths.append(model.save_pretrained(root / f"recipe{i}"))
    return paths


def _rss() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS, so RSS is what is held
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def _footprint(model: AdapterModel) -> dict[str, int]:
    loras = model._loras().values()
    packs = [pack for lora in loras for pack in lora.packs.values()]
    tables = [table for lora in loras for table in lora._slot_tables.values()]
    return {
        "ids": len(model.routing.ids),
        "id_capacity": model.routing.id_capacity,
        "slot_table_lengths": sorted({t.numel() for t in tables}),
        "largest_pack": max(p.capacity for p in packs),
        "pack_bytes": sum(t.numel() * t.element_size() for p in packs for t in (p.At, p.Bt, p.scale)),
        "table_bytes": sum(t.numel() * t.element_size() for t in tables),
    }


@torch.no_grad()
def test_cycling_thousands_of_adapters_keeps_tables_memory_and_outputs_bounded(folders):
    model = AdapterModel(tiny_llama()).eval()
    model.load_adapter(folders[1], adapter_name="keep_a")
    model.load_adapter(folders[3], adapter_name="keep_b")
    ids = input_ids(seed=4, batch=4)
    rows = ["keep_a", "__base__", "keep_b", "keep_a"]
    before = model(input_ids=ids, adapter_names=rows).logits.clone()

    rng = random.Random(0)
    resident: list[str] = []
    footprints, rss = {}, {}
    for i in range(ROUNDS):
        name = f"cycled{i}"
        model.load_adapter(folders[rng.randrange(len(folders))], adapter_name=name)
        resident.append(name)
        if len(resident) > RESIDENT:  # evict a random one, as an LRU under load would, roughly
            model.delete_adapter(resident.pop(rng.randrange(len(resident))))
        if (i + 1) % 200 == 0:
            footprints[i + 1] = _footprint(model)
            rss[i + 1] = _rss()
    for rounds, footprint in footprints.items():
        print(f"after {rounds:4d} rounds: RSS {rss[rounds] / 2**20:.1f} MiB, {footprint}")
        assert footprint["ids"] == RESIDENT + 2  # one id per resident adapter, none for the deleted ones
        # 10 resident + the base fit in 16 ids; every slot table covers them, no more.
        assert footprint["id_capacity"] == 16 and footprint["slot_table_lengths"] == [16]
        assert footprint["largest_pack"] <= RESIDENT + 2 + 8  # its resident adapters, slot 0, one growth step
    # Loose: allocator noise is a few MiB; leaking per adapter would show as a steady climb.
    assert rss[ROUNDS] - rss[200] < 16 * 2**20

    # Adapters resident all along compute what they did before the others came and went.
    assert torch.equal(model(input_ids=ids, adapter_names=rows).logits, before)
    # The newest adapters hold reused ids; each row equals that adapter run alone.
    names = resident[-3:] + ["keep_b"]
    mixed = model(input_ids=ids, adapter_names=names).logits
    for row, name in enumerate(names):
        model.set_adapter(name)
        assert max_diff(mixed[row], model(input_ids=ids[row: row + 1]).logits[0]) < 1e-5, name


@torch.no_grad()
def test_reused_id_maps_to_no_slot_where_its_new_holder_has_no_adapter(folders):
    """An id's previous holder adapted q_proj; its next holder does not: q_proj must give it nothing."""
    model = AdapterModel(tiny_llama()).eval()
    model.load_adapter(folders[0], adapter_name="first")  # q_proj, v_proj
    model.load_adapter(folders[3], adapter_name="other")  # k_proj, o_proj, up_proj
    first_id = model.routing.ids["first"]
    model.delete_adapter("first")
    model.load_adapter(folders[2], adapter_name="second")  # v_proj only
    assert model.routing.ids["second"] == first_id
    ids = input_ids(seed=5, batch=2)
    mixed = model(input_ids=ids, adapter_names=["second", "other"]).logits
    fresh = AdapterModel(tiny_llama()).eval()
    fresh.load_adapter(folders[2], adapter_name="second")
    assert max_diff(mixed[0], fresh(input_ids=ids[:1]).logits[0]) < 1e-5


def test_unload_gives_every_id_back(folders):
    model = AdapterModel(tiny_llama())
    for i in range(3):
        model.load_adapter(folders[i], adapter_name=f"a{i}")
    model.unload()
    assert model.routing.ids == {}
    model.load_adapter(folders[0], adapter_name="again")
    assert model.routing.ids == {"again": 1}


@torch.no_grad()
def test_reserved_room_means_loads_never_reallocate_a_pack(folders):
    model = AdapterModel(tiny_llama()).eval()
    model.load_adapter(folders[1], adapter_name="early")
    ids = input_ids(seed=6, batch=2)
    early = model(input_ids=ids, adapter_names=["early", "__base__"]).logits.clone()
    model.reserve_adapter_slots(12)  # existing packs grow once, now
    assert torch.equal(model(input_ids=ids, adapter_names=["early", "__base__"]).logits, early)
    storage: dict[tuple[str, int], int] = {}
    for i in range(11):
        model.load_adapter(folders[i % len(folders)], adapter_name=f"r{i}")
        for path, lora in model._loras().items():
            for rank, pack in lora.packs.items():
                assert pack.capacity == 13 and lora._slot_tables[rank].numel() >= 13
                assert storage.setdefault((path, rank), pack.At.data_ptr()) == pack.At.data_ptr(), (path, rank)
    assert model.routing.id_capacity == 13
    mixed = model(input_ids=ids, adapter_names=["early", "r10"]).logits
    assert max_diff(mixed[0], early[0]) < 1e-5
    model.set_adapter("r10")
    assert max_diff(mixed[1], model(input_ids=ids[1:]).logits[0]) < 1e-5


@pytest.mark.parametrize("bad", [-1, 2.5, "8", None, True])
def test_reserving_a_bad_number_of_adapters_is_refused(bad):
    model = AdapterModel(tiny_llama())
    with pytest.raises(AdapterCapacityError, match="reserve_adapter_slots"):
        model.reserve_adapter_slots(bad)
    assert model.routing.reserved_slots == 0


@torch.no_grad()
def test_a_copied_model_grows_its_own_tables(folders):
    """A deepcopy's routing watches the copy's modules: ids handed out in the copy reach its tables."""
    model = AdapterModel(tiny_llama()).eval()
    model.load_adapter(folders[0], adapter_name="first")
    copied = copy.deepcopy(model)
    for i in range(20):  # past the first id capacity (8): every table must grow, in the copy only
        copied.load_adapter(folders[3], adapter_name=f"more{i}")
    loras = copied._loras().values()
    assert all(t.numel() >= copied.routing.id_capacity for lora in loras for t in lora._slot_tables.values())
    assert all(t.numel() == 8 for lora in model._loras().values() for t in lora._slot_tables.values())
    ids = input_ids(seed=8, batch=2)
    mixed = copied(input_ids=ids, adapter_names=["more19", "first"]).logits
    assert max_diff(mixed[1], model(input_ids=ids[1:], adapter_names=["first"]).logits[0]) < 1e-5


def test_many_distinct_recipes_keep_the_target_cache_bounded():
    modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    subsets = [[m for bit, m in enumerate(modules) if mask >> bit & 1] for mask in range(1, 2 ** len(modules))]
    model = AdapterModel(tiny_llama())
    model.add_adapter("keep", LoraConfig(r=2, target_modules=modules))  # the modules stay attached
    for i, targets in enumerate(subsets[:100]):
        model.add_adapter(f"recipe{i}", LoraConfig(r=2, target_modules=targets))
        model.delete_adapter(f"recipe{i}")
    assert len(model._target_cache) <= 64 and len(model.routing.ids) == 1
