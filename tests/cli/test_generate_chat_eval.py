"""`adapterkit generate`, `chat` and `eval` on the tiny base with a real tokenizer: real subprocesses,
compared with transformers' own generate on an independently loaded model, and with the trainer's evaluation."""

from __future__ import annotations

import io
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
from adapterkit.generation import ChatSession, SamplingSettings, generate_text, open_model, run_chat
from adapterkit.training import ChatExample, exact_match, write_jsonl
from helpers import randomize_adapter


def run_cli(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "adapterkit.cli.main", *argv], capture_output=True, text=True,
                          input=stdin, env=env, timeout=300)


def save_adapter(base_dir, folder, seed: int) -> None:
    """A LoRA with random (non-zero) factors, so its greedy replies differ from the base's."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    randomize_adapter(model, seed=seed, std=0.6)
    model.save_pretrained(folder)


@pytest.fixture
def torch_threads():
    """In-process runs set torch's thread count; give the rest of the session its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


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


@pytest.mark.slow  # end to end in real processes
def test_version_is_the_installed_distributions():
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"adapterkit {version('adapterkit')}"


@pytest.mark.slow  # end to end in real processes
def test_generate_equals_transformers_generate_with_the_same_adapter(base_dir, adapters, capsys, torch_threads):
    left, right = adapters
    prompt = "w3 w4 w5"
    expected = {name: reference_reply(base_dir, folder, prompt, 8) for name, folder in
                (("left", left), ("right", right), ("base", None))}
    assert len(set(expected.values())) == 3, expected  # the adapters change the reply: the comparison can fail
    done = run_cli("generate", "--base", str(base_dir), "--adapter", str(left), "--max-tokens", "8", prompt)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected["left"] + "\n"
    assert main(["generate", "--base", str(base_dir), "--max-tokens", "8", prompt]) == 0  # no adapter: the base
    assert capsys.readouterr().out == expected["base"] + "\n"


def test_generate_resolves_a_store_ref(base_dir, adapters, tmp_path, capsys, monkeypatch, torch_threads):
    left, right = adapters
    store = AdapterStore(tmp_path / "home" / "store")
    store.put(str(left), name="pair")  # pair@1
    store.put(str(right), name="pair")  # pair@2
    store.tag("pair@1", "prod")
    monkeypatch.setenv("ADAPTERKIT_HOME", str(tmp_path / "home"))
    assert main(["generate", "--base", str(base_dir), "--adapter", "pair@prod", "--max-tokens", "8", "w3 w4 w5"]) == 0
    assert capsys.readouterr().out == reference_reply(base_dir, left, "w3 w4 w5", 8) + "\n"
    # a bare name is the latest version; --store names the store instead of $ADAPTERKIT_HOME
    monkeypatch.delenv("ADAPTERKIT_HOME")
    assert main(["generate", "--base", str(base_dir), "--adapter", "pair", "--store", str(store.root),
                 "--max-tokens", "8", "w3 w4 w5"]) == 0
    assert capsys.readouterr().out == reference_reply(base_dir, right, "w3 w4 w5", 8) + "\n"


@pytest.mark.slow  # end to end in real processes
def test_sampling_with_a_seed_repeats(base_dir, adapters):
    left, _ = adapters
    model, tokenizer, _ = open_model(str(base_dir), [str(left)])
    chat = [{"role": "user", "content": "w1 w2"}]

    def sample(seed: int) -> str:
        return generate_text(model, tokenizer, chat, SamplingSettings(max_new_tokens=12, temperature=5.0, seed=seed))

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)  # at temperature 5 over 64 words, two seeds agreeing on 12 is ~impossible
    greedy = SamplingSettings(max_new_tokens=8)
    assert generate_text(model, tokenizer, [{"role": "user", "content": "w3 w4 w5"}], greedy) == \
        reference_reply(base_dir, left, "w3 w4 w5", 8)


@pytest.mark.slow  # end to end in real processes
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


def test_chat_survives_bad_commands_and_streams_the_same_reply(base_dir, adapters, tmp_path):
    left, _ = adapters
    model, tokenizer, sources = open_model(str(base_dir), [str(left)])
    session = ChatSession(model, tokenizer, SamplingSettings(max_new_tokens=4), sources, store_root=tmp_path / "store")
    out, err = io.StringIO(), io.StringIO()
    lines = ["/adapter ./no/such/folder", "/adapter bad@@ref", "/adapter nothing_stored", "/frobnicate", "w3 w4 w5"]
    assert run_chat(session, lines, out, err) == 0
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 3, err.getvalue()
    assert "does not exist" in errors[0] and "neither" in errors[1] and "nothing_stored" in errors[2]
    assert "unknown command" in err.getvalue()
    assert out.getvalue().splitlines() == [reference_reply(base_dir, left, "w3 w4 w5", 4)]  # still the left adapter
    assert [s.short_name for s in session.sources] == ["left"]


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


@pytest.mark.slow  # end to end in real processes
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


def test_eval_prints_the_score(base_dir, adapters, tmp_path, capsys, torch_threads):
    left, _ = adapters
    path, _ = held_out(tmp_path, base_dir, left, count=4)
    assert main(["eval", "--base", str(base_dir), "--adapter", str(left), "--data", str(path), "--max-tokens", "4",
                 "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == "exact match: 2/4 = 50.0%"
    assert torch.get_num_threads() == 1  # --threads reached torch
