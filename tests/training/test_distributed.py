"""Multi-process training in real processes on CPU (gloo), through the real launchers.

One module-scoped set of runs, the README's "scaling out" commands on a tiny base (each
launch costs ~10-20 s of process start-up on a small machine), then the checks:
  single   `adapterkit train` in this process, 6 steps, checkpoints every 2
  ddp      `adapterkit train --nproc 2` (torch.distributed.run), same arguments
  resume21 ddp's checkpoint-000002 resumed by 1 process
  fsdp12   single's checkpoint-000002 resumed by `torchrun --nproc-per-node 2 -m adapterkit.training
           ... --shard-base`: 2 processes, base sharded with FSDP2, steps 3-6
The global batch (3 examples x 2 micro-batches) splits 2 + 1 across the ranks, so
the global token weighting of uneven shares is exercised.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit.cli.main import main
from adapterkit.errors import DistributedTrainingError
from adapterkit.training.checkpoint import load_checkpoint_state
from adapterkit.training.distributed import ReplicaGroup
from helpers import VOCAB, tiny_llama
from readme_commands import readme_commands, substitute

VENV_BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[2] / "src"
# Measured on this machine (max |a - b| / max |a| per tensor): adapter 8.7e-7 (2 processes),
# 9.6e-7 (resumed 2 -> 1), 3.1e-7 (1 -> 2, FSDP2); loss curve 1.0e-7;
# the bound leaves room for other thread counts and CPUs, not for a wrong gradient
# (a mean instead of a sum, or a rank's share counted twice, is off by > 1e-2).
PARITY_RTOL = 1e-5
TRAIN_ARGS = ["--targets", "q_proj,v_proj", "--r", "4", "--alpha", "8", "--steps", "6", "--batch-size", "3",
              "--grad-accum", "2", "--lr", "0.05", "--seed", "3", "--checkpoint-every", "2"]


def write_tiny_chat_base(folder: Path) -> None:
    """A tiny Llama with a word-level tokenizer and a chat template, saved as a transformers folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"] + [f"w{i}" for i in range(VOCAB - 5)]
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ '<' + m['role'] + '> ' + m['content'] + ' <eos> ' }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}")
    model = tiny_llama(seed=0)
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def worker_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.pop("RANK", None)
    return env


def run_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    write_tiny_chat_base(root / "base")
    rows = [{"prompt": f"w{i} w{i + 1}", "response": f"w{i + 2} w{(i * 7) % 50}"} for i in range(20)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--base", str(root / "base"), "--data", str(root / "train.jsonl"), *TRAIN_ARGS]

    # The README's commands, on the tiny base, with TRAIN_ARGS appended (argparse keeps the last value).
    ddp_line, one_resumes_line, torchrun_line = readme_commands("scaling-out:training")

    def readme_run(line: list[str], output: str) -> list[str]:
        argv = substitute(line, {"smollm2": str(root / "base"), "train.jsonl": str(root / "train.jsonl"),
                                 "reverse": str(root / output)})
        return [str(VENV_BIN / argv[0]), *argv[1:], *TRAIN_ARGS]

    assert main(["train", *common, "--output", str(root / "single")]) == 0
    ddp = run_command(readme_run(ddp_line, "ddp"), root)
    # Resume 2 -> 1: the two-process run's step-2 checkpoint, continued by one process.
    seed_checkpoint(root / "ddp-checkpoints", root / "resume21-checkpoints", step=2)
    assert one_resumes_line[:2] == ["adapterkit", "train"]
    assert main(readme_run(one_resumes_line, "resume21")[1:]) == 0
    # Resume 1 -> 2: the single run's step-2 checkpoint, continued by two processes launched by
    # torchrun itself, with the base sharded by FSDP2.
    seed_checkpoint(root / "single-checkpoints", root / "fsdp12-checkpoints", step=2)
    assert {"torchrun", "--shard-base", "--resume"} <= set(torchrun_line)
    run_command(readme_run(torchrun_line, "fsdp12"), root)
    return root, ddp


def seed_checkpoint(source: Path, target: Path, step: int) -> None:
    """A run directory as a crash after `step` leaves it: that checkpoint and nothing later."""
    target.mkdir()
    name = f"checkpoint-{step:06d}"
    shutil.copytree(source / name, target / name)
    shutil.copy(source / f"{name}.trainer_state.pt", target / f"{name}.trainer_state.pt")


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def losses(run: Path) -> list[float]:
    return load_checkpoint_state(Path(f"{run}-checkpoints") / "checkpoint-000006")["losses"]


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max() / a[k].abs().max()) for k in a)


@pytest.mark.slow  # end to end in real processes
def test_two_processes_equal_one(runs):
    root, ddp = runs
    single, two = adapter(root / "single"), adapter(root / "ddp")
    assert all(t.dtype == torch.float32 for t in single.values())
    assert relative_difference(single, two) <= PARITY_RTOL
    assert max(abs(x - y) / abs(x) for x, y in zip(losses(root / "single"), losses(root / "ddp"))) <= PARITY_RTOL
    assert len(losses(root / "ddp")) == 6
    # The adapter trained: parity between two untouched adapters would prove nothing.
    assert any(t.abs().max() > 1e-3 for k, t in single.items() if "lora_B" in k)
    assert "trained 6 steps" in ddp.stdout and ddp.stdout.count("trainable params") == 1  # rank 0 alone reports


@pytest.mark.slow  # end to end in real processes
def test_fsdp2_sharded_base_saves_whole_adapters(runs):
    root, _ = runs
    single = adapter(root / "single")
    for saved in (root / "fsdp12", root / "fsdp12-checkpoints" / "checkpoint-000004"):
        sharded = adapter(saved)
        assert sharded.keys() == single.keys()
        for key, tensor in sharded.items():
            assert tensor.numel() > 0 and tensor.shape == single[key].shape, key  # never a shard, never empty
    assert relative_difference(adapter(root / "fsdp12"), single) <= PARITY_RTOL


@pytest.mark.slow  # end to end in real processes
def test_resume_with_another_number_of_processes(runs):
    root, _ = runs
    uninterrupted = adapter(root / "single")
    for resumed in ("resume21", "fsdp12"):
        assert relative_difference(adapter(root / resumed), uninterrupted) <= PARITY_RTOL, resumed
        assert max(abs(x - y) / abs(x) for x, y in zip(losses(root / resumed), losses(root / "single"))) <= PARITY_RTOL


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_shards_cover_each_batch_once_in_order(world_size):
    for size in range(world_size, 12):
        rows = list(range(size))
        shards = [ReplicaGroup(rank, world_size).shard(rows) for rank in range(world_size)]
        assert [r for shard in shards for r in shard] == rows
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_batch_smaller_than_the_group_is_refused():
    for world_size in range(2, 6):
        for batch_size in range(1, world_size):
            with pytest.raises(DistributedTrainingError, match=f"--batch-size {world_size}"):
                ReplicaGroup(0, world_size).check_batch_size(batch_size)


def test_cli_refuses_bad_process_counts_before_launching(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    refusals = {("--nproc", "0"): "--nproc", ("--nproc", "-2"): "--nproc", ("--shard-base",): "--nproc",
                ("--nproc", "1", "--shard-base"): "--nproc", ("--nproc", "4", "--batch-size", "3"): "--batch-size 4",
                ("--nproc", "2", "--data", str(tmp_path / "none.jsonl")): "does not exist"}
    for extra, words in refusals.items():
        assert main(["train", "--data", str(data), "--output", str(tmp_path / "o"), *extra]) == 2
        assert words in capsys.readouterr().err
        assert not (tmp_path / "o").exists()


@pytest.mark.slow  # end to end in real processes
def test_a_failing_worker_fails_the_command_without_hanging(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n' * 4)
    done = subprocess.run([str(VENV_BIN / "adapterkit"), "train", "--nproc", "2", "--base", str(tmp_path / "no-base"),
                           "--data", str(data), "--output", str(tmp_path / "o")],
                          env=worker_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 2
    assert done.stderr.count("base model folder") == 2  # each worker's own error
    assert done.stderr.strip().splitlines()[-1].startswith("adapterkit train: error: 2 of 2 training processes failed")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # end to end in real processes
def test_group_collectives_in_real_processes(tmp_path):
    import torch.multiprocessing as mp

    world_size = 2
    from group_worker import group_worker  # a module of its own: spawned ranks import only it

    mp.spawn(group_worker, args=(world_size, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world_size)
    outs = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(world_size)]
    for rank, out in enumerate(outs):
        assert out["sum"] == [3.0, 1.0]  # sums, not means
        assert out["grad"] == [[3.0] * 3] * 2 and out["unused"] == [0.0] * 3
        assert "differs between ranks on 1 of 2" in out["drift"]
        # Rank 0's own error, and the others are told instead of waiting at a barrier.
        assert out["failed_write"] == ("OSError" if rank == 0 else "DistributedTrainingError")
        assert out["write"] == ("written" if rank == 0 else None)


def test_dropout_streams_differ_by_rank_and_step_and_repeat():
    def draw(rank, step):
        ReplicaGroup(rank, 2).seed_step(seed=3, step=step)
        return torch.rand(4)

    draws = {(rank, step): draw(rank, step) for rank in range(2) for step in range(3)}
    assert all(torch.equal(draw(rank, step), value) for (rank, step), value in draws.items())
    values = list(draws.values())
    assert all(not torch.equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])


@pytest.mark.parametrize("damage", ["shard", "empty"])
def test_a_sharded_or_empty_adapter_is_never_saved(damage):
    from adapterkit import LoraConfig, get_peft_model
    from adapterkit.training.fsdp import check_adapter_whole

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("dora", LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    assert check_adapter_whole(model) == 8 + 6  # 2 layers x 2 modules x (A, B), and 2 x (A, B, magnitude)
    lora = model.get_base_model().model.layers[1].self_attn.v_proj.lora
    lora.lora_B["default"].data = lora.lora_B["default"].data[:4] if damage == "shard" else torch.empty(0)
    with pytest.raises(DistributedTrainingError, match="lora_B holds a tensor of shape"):
        check_adapter_whole(model)
    lora.lora_B["default"].data = torch.zeros(lora.out_features, 4)
    magnitude = model.get_base_model().model.layers[0].self_attn.q_proj.lora.lora_magnitude_vector["dora"]
    magnitude.data = magnitude.data[:3] if damage == "shard" else torch.empty(0)
    with pytest.raises(DistributedTrainingError, match="'dora' lora_magnitude_vector holds a tensor of shape"):
        check_adapter_whole(model)


def test_workers_get_the_arguments_the_user_gave():
    """`--nproc N` re-launches `python -m adapterkit.training` with argv rebuilt from the parsed
    arguments; every combination must parse back to the same namespace (less --nproc)."""
    import argparse
    import itertools

    from adapterkit.cli.train_command import add_train
    from adapterkit.cli.train_launch import worker_argv

    def parse(argv):
        parser = argparse.ArgumentParser()
        add_train(parser)
        return vars(parser.parse_args(argv))

    options = [["--base", "/m/base dir"], ["--eval-data", "e.jsonl"], ["--targets", "all-linear"], ["--r", "16"],
               ["--alpha", "0.5"], ["--dropout", "0.1"], ["--steps", "7"], ["--lr", "3e-05"], ["--seed", "-1"],
               ["--checkpoint-every", "3"], ["--resume"], ["--shard-base"], ["--grad-accum", "2"]]
    for count in (0, 1, 2, 13):
        for chosen in itertools.islice(itertools.combinations(options, count), 40):
            argv = ["--data", "d.jsonl", "--output", "o", "--nproc", "2", *itertools.chain(*chosen)]
            given = parse(argv)
            rebuilt = parse(worker_argv(argparse.Namespace(**given), add_train))
            assert {**given, "nproc": 1} == rebuilt, argv


def test_a_share_without_labels_adds_zero_instead_of_nan():
    """A rank's share may hold no predicted token; it must still run forward and backward (a sharded
    base needs every rank in each all-gather) and add nothing."""
    from types import SimpleNamespace

    from adapterkit import LoraConfig, get_peft_model
    from adapterkit.training.encoding import IGNORE_INDEX, EncodedExample
    from adapterkit.training.trainer import TrainConfig, _optimizer_step, trainable_parameters

    labelled = EncodedExample(input_ids=[3, 4, 5, 6], labels=[IGNORE_INDEX, IGNORE_INDEX, 5, 6])
    unlabelled = EncodedExample(input_ids=[3, 4, 5], labels=[IGNORE_INDEX] * 3)
    results = []
    for batches in ([[labelled]], [[labelled], [unlabelled]]):
        torch.manual_seed(0)
        model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        params = trainable_parameters(model)
        optimizer = torch.optim.SGD(params.values(), lr=1.0)
        loss, _ = _optimizer_step(model, SimpleNamespace(pad_token_id=0), batches, TrainConfig(max_grad_norm=None, trim_logits=False),
                                  params, optimizer, ReplicaGroup())
        results.append((loss, [p.detach().clone() for p in params.values()]))
    (loss_one, after_one), (loss_two, after_two) = results
    assert loss_one == loss_two and all(torch.equal(a, b) for a, b in zip(after_one, after_two))


def test_module_entry_point_takes_train_arguments_after_a_double_dash(tmp_path, capsys):
    from adapterkit.training.__main__ import run

    for argv in (["--", "--data", str(tmp_path / "none.jsonl"), "--output", "o"],
                 ["--data", str(tmp_path / "none.jsonl"), "--output", "o"]):
        assert run(argv) == 2
        assert "none.jsonl does not exist" in capsys.readouterr().err
