import pytest
import torch

from adapterkit.training.collate import collate_prompts, collate_training, pad_sequences
from adapterkit.training.encoding import IGNORE_INDEX, EncodedExample
from adapterkit.training.schedule import lr_multiplier, warmup_then_decay


def test_padding_sides():
    assert pad_sequences([[1, 2, 3], [4]], 0, "right").tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_sequences([[1, 2, 3], [4]], 0, "left").tolist() == [[1, 2, 3], [0, 0, 4]]
    with pytest.raises(ValueError, match="left"):
        pad_sequences([[1]], 0, "middle")


def test_padding_is_masked_and_never_learned():
    batch = [EncodedExample([1, 2, 3], [IGNORE_INDEX, 2, 3]), EncodedExample([4, 5], [IGNORE_INDEX, 5])]
    for side in ("left", "right"):
        out = collate_training(batch, pad_id=9, side=side)
        padded = out["attention_mask"] == 0
        assert padded.sum() == 1
        assert (out["labels"][padded] == IGNORE_INDEX).all() and (out["input_ids"][padded] == 9).all()
    prompts = collate_prompts([[1, 2, 3], [4]], pad_id=9)
    assert prompts["input_ids"][:, -1].tolist() == [3, 4]  # prompts end in the same column


def test_warmup_then_cosine_and_linear_decay():
    values = [lr_multiplier(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert values[:4] == sorted(values[:4]) and values[0] > 0
    assert values[4] == pytest.approx(1.0)
    assert values[4:] == sorted(values[4:], reverse=True)
    assert lr_multiplier(20, 4, 20) == pytest.approx(0.0)
    assert lr_multiplier(12, 4, 20, decay="linear") == pytest.approx(0.5)
    assert lr_multiplier(20, 4, 20, floor=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(0, 1, 2, decay="step")


def test_scheduler_drives_optimizer():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=2.0)
    scheduler = warmup_then_decay(optimizer, warmup_steps=1, total_steps=3)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1.0, 2.0, 1.0])
