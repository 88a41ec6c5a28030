import pytest
import torch

from adapterkit import LoraConfig, get_peft_model
from adapterkit.training.checkpoint import latest_checkpoint, state_path
from adapterkit.training.errors import CheckpointError
from adapterkit.training.trainer import TrainConfig, train


def lora(base, seed=0, targets=("q_proj", "v_proj")):
    torch.manual_seed(seed)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))


def adapter_weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys() and a
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def config(**overrides):
    base = dict(steps=6, batch_size=4, lr=1e-2, warmup_steps=2, seed=3, progress=False)
    return TrainConfig(**{**base, **overrides})


def test_loss_falls_and_only_adapters_change(tiny_llama, smol_tokenizer, word_examples):
    frozen = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    model = lora(tiny_llama, targets=["q_proj", "v_proj", "o_proj", "down_proj"])
    result = train(model, smol_tokenizer, word_examples, config(steps=20, lr=5e-2))
    assert sum(result.losses[-3:]) < 0.8 * sum(result.losses[:3])
    assert result.tokens > 0 and result.tokens_per_second > 0
    for name, p in model.get_base_model().named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), f"base weight {name} changed"


def test_same_seed_same_adapter(smol_tokenizer, word_examples, tiny_llama):
    import copy

    twin = copy.deepcopy(tiny_llama)
    first, second = lora(tiny_llama), lora(twin)
    train(first, smol_tokenizer, word_examples, config())
    train(second, smol_tokenizer, word_examples, config())
    assert_same_weights(adapter_weights(first), adapter_weights(second))


def test_resume_equals_uninterrupted(tmp_path, smol_tokenizer, word_examples, tiny_llama):
    import copy

    twin, spare = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    whole = lora(tiny_llama)
    full = train(whole, smol_tokenizer, word_examples, config())

    interrupted = lora(twin)
    out = str(tmp_path / "run")
    train(interrupted, smol_tokenizer, word_examples, config(steps=6, output_dir=out, checkpoint_every=2))
    assert latest_checkpoint(out).name == "checkpoint-000006"
    # Simulate a crash after step 4: a fresh adapter, resumed from that checkpoint.
    resumed_model = lora(spare, seed=99)
    resumed = train(resumed_model, smol_tokenizer, word_examples, config(output_dir=out),
                    resume_from=tmp_path / "run" / "checkpoint-000004")
    assert_same_weights(adapter_weights(resumed_model), adapter_weights(whole))
    assert resumed.losses == full.losses
    assert (tmp_path / "run" / "checkpoint-000004" / "adapter_config.json").is_file()


def test_resume_latest_and_refusals(tmp_path, smol_tokenizer, word_examples, tiny_llama):
    out = tmp_path / "run"
    model = lora(tiny_llama)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        train(model, smol_tokenizer, word_examples, config(output_dir=str(out)), resume_from="latest")
    train(model, smol_tokenizer, word_examples, config(steps=2, output_dir=str(out)))
    with pytest.raises(CheckpointError, match="lr"):
        train(model, smol_tokenizer, word_examples, config(steps=2, lr=5e-3, output_dir=str(out)), resume_from="latest")
    state_path(out / "checkpoint-000002").unlink()  # a crash before the state file landed
    assert latest_checkpoint(out) is None
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        train(model, smol_tokenizer, word_examples, config(steps=2), resume_from=out / "checkpoint-000002")


def test_accumulation_matches_one_big_batch(smol_tokenizer, word_examples, tiny_llama):
    import copy

    twin = copy.deepcopy(tiny_llama)
    big, accumulated = lora(tiny_llama), lora(twin)
    train(big, smol_tokenizer, word_examples, config(batch_size=8, grad_accum=1))
    train(accumulated, smol_tokenizer, word_examples, config(batch_size=4, grad_accum=2))
    assert_same_weights(adapter_weights(big), adapter_weights(accumulated), exact=False)


def test_trimmed_logits_give_the_full_loss(smol_tokenizer, word_examples, tiny_llama):
    import copy

    twin = copy.deepcopy(tiny_llama)
    trimmed = train(lora(tiny_llama), smol_tokenizer, word_examples, config(steps=3, trim_logits=True))
    full = train(lora(twin), smol_tokenizer, word_examples, config(steps=3, trim_logits=False))
    assert trimmed.losses == pytest.approx(full.losses, rel=1e-4)


def test_model_without_trainable_parameters_is_refused(smol_tokenizer, word_examples, tiny_llama):
    tiny_llama.requires_grad_(False)
    with pytest.raises(ValueError, match="get_peft_model"):
        train(tiny_llama, smol_tokenizer, word_examples, config())


def test_trains_a_peft_model_too(smol_tokenizer, word_examples, tiny_llama):
    peft = pytest.importorskip("peft")  # the reference implementation, a test-only dependency
    torch.manual_seed(0)
    model = peft.get_peft_model(tiny_llama, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    before = adapter_weights(model)
    result = train(model, smol_tokenizer, word_examples, config(steps=3))
    assert len(result.losses) == 3
    assert any(not torch.equal(before[n], p) for n, p in adapter_weights(model).items())
