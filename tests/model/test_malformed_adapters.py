"""Several hundred seeded malformed adapter folders (tests/malformed_adapters.py): each is refused
with a typed error or loaded correctly, a failure leaves the model as it was, verify agrees with
load_adapter, and every failing `inspect` / `verify` prints one line on stderr."""

from __future__ import annotations

import subprocess
import sys

import pytest

from malformed_adapters import Judge, base_loaded_once, generate, make_pristine


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed")
    base_dir, pristine = make_pristine(root)
    return root, base_dir, generate(root, pristine, seed=0)


def test_every_malformed_folder_is_refused_typed_and_atomically_or_loaded_correctly(corpus):
    root, base_dir, variants = corpus
    assert len(variants) >= 300
    assert {v.family for v in variants} == {"truncation", "header", "dtype", "value", "config-type",
                                            "file-system", "name"}
    judge = Judge(base_dir, root / "pristine")
    with base_loaded_once(base_dir):
        for variant in variants:
            judge(variant)
    figures = judge.figures
    print(figures.summary(), dict(figures.by_family))
    assert figures.failures == [], "\n".join(figures.failures[:40])
    assert figures.variants == len(variants)


@pytest.mark.slow  # end to end in real processes
@pytest.mark.parametrize("family, label", [
    ("config-type", "rank_pattern = [1, 2]"),
    ("dtype", "as torch.int8"),
])
def test_the_real_command_prints_one_line_and_fails(corpus, family, label):
    """A handful of variants through real subprocesses (the real load_base, the real stderr)."""
    root, base_dir, variants = corpus
    variant = next(v for v in variants if v.family == family and label in v.label and not v.load_kwargs)
    for argv in (["inspect", str(variant.folder)], ["verify", str(variant.folder), "--base", str(base_dir)]):
        done = subprocess.run([sys.executable, "-m", "adapterkit.cli.main", *argv], capture_output=True, text=True,
                              timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode != 0 and len(lines) == 1 and "Traceback" not in done.stderr, (argv, done.stderr)
