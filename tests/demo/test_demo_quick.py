"""The demo's story end to end on the real embedded SmolLM2, in its --quick form.

Slow (it converts the GGUF on first use and trains two adapters), but CI runs it:
it is the one test that exercises the whole workflow on a real pretrained model.
"""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from adapterkit.demo.story import run_demo


@pytest.mark.slow
def test_quick_demo_tells_the_whole_story(tmp_path):
    result = run_demo(quick=True, workdir=tmp_path)

    failed = [claim for claim, held in result.checks.items() if not held]
    assert not failed, failed
    assert set(result.checks) >= {
        "reloaded outputs identical", "disable_adapter gives base behaviour",
        "mixed batch rows equal each row alone", "merged model matches the adapter",
        "adapter file still loads on its own",
    }
    assert result.base_parameters > 100_000_000  # the real 135M model, not a toy
    assert len(result.outcomes) == 2
    for outcome in result.outcomes:
        assert outcome.base_exact_match < 0.3, outcome
        assert outcome.adapter_exact_match > outcome.base_exact_match + 0.5, outcome  # quick training still learns
        assert 0 < outcome.adapter_bytes < result.full_copy_bytes / 50
    adapters = tmp_path / "adapters"
    assert sorted(p.name for p in adapters.iterdir()) == sorted(o.name for o in result.outcomes)
    merged = [p for p in tmp_path.iterdir() if p.name.startswith("merged-")]
    assert len(merged) == 1
    plain = AutoModelForCausalLM.from_pretrained(merged[0])
    assert not any("lora" in name for name in plain.state_dict())
