"""`adapterkit generate`, `chat` and `eval` on the tiny base with a real tokenizer: real subprocesses,
compared with transformers' own generate on an independently loaded model, and with the trainer's evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapterkit import AdapterModel, AdapterStore, LoraConfig, get_peft_model
from adapterkit.cli.main import main
from adapterkit.training import ChatExample, exact_match, write_jsonl
from helpers import randomize_adapter


def run_cli(*argv: str, stdin: str | None = None, home=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if home is not None:
        env["ADAPTERKIT_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "adapterkit.cli.main", *argv], capture_output=True, text=True,
                          input=stdin, env=env, timeout=300)


def save_adapter(base_dir, folder, seed: int) -> None:
    """A LoRA with random (non-zero) factors, so its greedy replies differ from the base's."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    randomize_adapter(model, seed=seed, std=0.6)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def adapters(base_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    save_adapter(base_dir, root / "left", seed=11)
    save_adapter(base_dir, root / "right", seed=12)
    return root / "left", root / "right"


@torch.no_grad()
def reference_reply(base_dir, adapter, prompt: str, max_new_tokens: int, history=()) -> str:
    """transformers' generate on a freshly loaded model, the chat template applied by the tokenizer itself."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    model = AdapterModel.from_pretrained(base, adapter) if adapter is not None else base
    messages = [*history, {"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_version_is_the_installed_distributions():
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adapterkit {version('adapterkit')}"


def test_generate_equals_transformers_generate_with_the_same_adapter(base_dir, adapters):
    left, right = adapters
    prompt = "w3 w4 w5"
    expected = {name: reference_reply(base_dir, folder, prompt, 8) for name, folder in
                (("left", left), ("right", right), ("base", None))}
    assert len(set(expected.values())) == 3, expected  # the adapters change the reply: the comparison can fail
    done = run_cli("generate", "--base", str(base_dir), "--adapter", str(left), "--max-tokens", "8", prompt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected["left"] + "\n"
    base_only = run_cli("generate", "--base", str(base_dir), "--max-tokens", "8", prompt)
    assert base_only.stdout == expected["base"] + "\n"


def test_generate_resolves_a_store_ref(base_dir, adapters, tmp_path):
    left, right = adapters
    store = AdapterStore(tmp_path / "home" / "store")
    store.put(str(left), name="pair")  # pair@1
    store.put(str(right), name="pair")  # pair@2
    store.tag("pair@1", "prod")
    replies = {ref: run_cli("generate", "--base", str(base_dir), "--adapter", ref, "--max-tokens", "8", "w3 w4 w5",
                            home=tmp_path / "home") for ref in ("pair@prod", "pair")}
    assert replies["pair@prod"].returncode == 0, replies["pair@prod"].stderr
    assert replies["pair@prod"].stdout == reference_reply(base_dir, left, "w3 w4 w5", 8) + "\n"
    assert replies["pair"].stdout == reference_reply(base_dir, right, "w3 w4 w5", 8) + "\n"  # bare name: latest


def test_sampling_with_a_seed_repeats(base_dir, adapters):
    left, _ = adapters
    argv = ["generate", "--base", str(base_dir), "--adapter", str(left), "--max-tokens", "12", "--temperature", "5",
            "w1 w2"]
    first, second, other = run_cli(*argv, "--seed", "1"), run_cli(*argv, "--seed", "1"), run_cli(*argv, "--seed", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout  # at temperature 5 over 64 words, two seeds agreeing on 12 is ~impossible


def test_chat_switches_adapters_mid_session(base_dir, adapters):
    left, right = adapters
    lines = ["w3 w4 w5", "w6 w7", f"/adapter {right}", "w3 w4 w5", "/base", "w3 w4 w5", "/adapter left", "w9", "/quit",
             "never answered"]
    done = run_cli("chat", "--base", str(base_dir), "--adapter", str(left), "--max-tokens", "6",
                   stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    first = reference_reply(base_dir, left, "w3 w4 w5", 6)
    expected = [
        first,
        # the second turn sees the first: a conversation, not two one-shot prompts
        reference_reply(base_dir, left, "w6 w7", 6,
                        history=[{"role": "user", "content": "w3 w4 w5"}, {"role": "assistant", "content": first}]),
        reference_reply(base_dir, right, "w3 w4 w5", 6),  # switching starts a new conversation
        reference_reply(base_dir, None, "w3 w4 w5", 6),
        reference_reply(base_dir, left, "w9", 6),  # back to the first adapter, by its short name
    ]
    assert done.stdout.splitlines() == expected
    assert "using adapter right" in done.stderr and "base model alone" in done.stderr


def test_chat_survives_a_bad_adapter_command(base_dir, adapters):
    left, _ = adapters
    done = run_cli("chat", "--base", str(base_dir), "--adapter", str(left), "--max-tokens", "4",
                   stdin="/adapter ./no/such/folder\n/adapter bad@@ref\n/frobnicate\nw3 w4 w5\n")
    assert done.returncode == 0, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "does not exist" in errors[0] and "neither" in errors[1], done.stderr
    assert "unknown command" in done.stderr
    assert done.stdout.splitlines() == [reference_reply(base_dir, left, "w3 w4 w5", 4)]  # still the left adapter


def held_out(tmp_path, base_dir, adapter, count: int = 12):
    """Held-out rows, half of them answered exactly as the adapter answers, so the score is neither 0 nor 1."""
    rows = []
    for i in range(count):
        prompt = f"w{i + 5} w{i + 6}"
        reply = reference_reply(base_dir, adapter, prompt, 4).strip()
        rows.append(ChatExample.from_prompt(prompt, reply if i % 2 == 0 else "w60 w61"))
    path = tmp_path / "held-out.jsonl"
    write_jsonl(path, rows)
    return path, rows


def test_eval_score_equals_the_trainers_exact_match(base_dir, adapters, tmp_path):
    left, _ = adapters
    path, rows = held_out(tmp_path, base_dir, left)
    done = run_cli("eval", "--base", str(base_dir), "--adapter", str(left), "--data", str(path), "--max-tokens", "4",
                   "--batch-size", "5", "--json")
    assert done.returncode == 0, done.stderr
    score = json.loads(done.stdout)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AdapterModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), left)
    expected = exact_match(model, tokenizer, rows, max_new_tokens=4)
    assert (score["correct"], score["total"]) == (expected.correct, expected.total) == (6, 12)
    assert score["exact_match"] == expected.exact_match
    text = run_cli("eval", "--base", str(base_dir), "--adapter", str(left), "--data", str(path), "--max-tokens", "4")
    assert text.stdout.strip() == "exact match: 6/12 = 50.0%"


@pytest.fixture
def torch_threads():
    """In-process runs set torch's thread count; give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_eval_in_process_prints_the_same(base_dir, adapters, tmp_path, capsys, torch_threads):
    left, _ = adapters
    path, _ = held_out(tmp_path, base_dir, left, count=4)
    assert main(["eval", "--base", str(base_dir), "--adapter", str(left), "--data", str(path), "--max-tokens", "4",
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == "exact match: 2/4 = 50.0%"
