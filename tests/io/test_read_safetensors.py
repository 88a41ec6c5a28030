"""Reading adapter weights: the same tensors safetensors gives, writable, and nothing leaked per read."""

from __future__ import annotations

import ctypes
import gc

import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from adapterkit.io.folder import read_safetensors

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int64, torch.bool,
          torch.uint8, torch.complex64]


def test_every_dtype_and_shape_reads_as_safetensors_reads_it(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        for shape in [(3, 5), (7,), (), (0, 4), (2, 3, 4)]:
            values = torch.randn(shape, generator=generator) * 10
            tensors[f"t{i}.{len(shape)}.{'x'.join(map(str, shape))}"] = values.to(dtype)
    path = tmp_path / "w.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "k": "v"})
    got, metadata = read_safetensors(path)
    assert metadata == {"format": "pt", "k": "v"}
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(got) == sorted(handle.keys())
        for name in handle.keys():
            expected = handle.get_tensor(name)
            assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, name
            assert torch.equal(got[name], expected), name
    got["t0.2.3x5"].add_(1)  # writable, and its own memory: the file is untouched
    assert torch.equal(read_safetensors(path)[0]["t0.2.3x5"], tensors["t0.2.3x5"])


def _rss() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def test_reading_thousands_of_times_holds_no_memory(tmp_path):
    """safetensors' get_tensor leaks ~64 bytes a call: 300 tensors x 600 reads would hold ~11 MiB."""
    path = tmp_path / "many.safetensors"
    save_file({f"layer{i}.lora_A.weight": torch.randn(4, 8) for i in range(300)}, path)
    for _ in range(50):
        read_safetensors(path)
    before = _rss()
    for _ in range(600):
        read_safetensors(path)
    grown = _rss() - before
    print(f"\nRSS after 600 more reads of 300 tensors: {grown / 2**20:+.1f} MiB")
    assert grown < 4 * 2**20  # get_tensor held ~11 MiB here
