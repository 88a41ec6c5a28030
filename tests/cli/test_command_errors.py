"""Bad input to `generate`, `chat` and `eval`: generated families, each case one line on stderr and a
non-zero exit, refused before the base model loads (the base given here does not even exist)."""

from __future__ import annotations

import itertools
import json

import pytest

from adapterkit.cli.main import main
from adapterkit.store import AdapterStore

MISSING_PATHS = ["./nope", "/no/such/adapter", "~/no/such/adapter", "a/b/c", "../up/and/away"]
MALFORMED_REFS = ["x@", "@1", "x@0", "x@-1", "x@1.5", "a@b@c", "with space", "x@\u00b2", "x@\u0661", "tab\there"]
UNSTORED_REFS = ["ghost", "ghost@1", "ghost@latest", "ghost@prod", "kept@7", "kept@nosuchtag"]
BAD_NUMBERS = {
    "--max-tokens": ["0", "-1", "abc", "1.5", ""],
    "--threads": ["0", "-2", "x", "2.0"],
}
BAD_TEMPERATURES = ["-1", "-0.5", "nan", "inf", "abc"]
COMMANDS = ["generate", "chat", "eval"]


@pytest.fixture(autouse=True)
def torch_threads():
    """--threads reaches torch in-process; give the rest of the session its own count back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A store holding one adapter version (kept@1), valid held-out data, and a file that is not a folder."""
    from adapterkit import LoraConfig, get_peft_model
    from helpers import tiny_llama

    monkeypatch.setenv("ADAPTERKIT_HOME", str(tmp_path / "home"))
    adapter = tmp_path / "kept"
    get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    AdapterStore().put(str(adapter), name="kept")
    data = tmp_path / "held-out.jsonl"
    data.write_text(json.dumps({"prompt": "w1", "response": "w2"}) + "\n")
    plain_file = tmp_path / "not-a-folder.txt"
    plain_file.write_text("x")
    return {"data": str(data), "file": str(plain_file), "root": tmp_path}


def argv(command: str, env: dict, *extra: str) -> list[str]:
    base = ["--base", str(env["root"] / "no-such-base")]
    if command == "generate":
        return [command, *base, *extra, "hello"]
    if command == "eval":
        return [command, *base, "--data", env["data"], *extra]
    return [command, *base, *extra]


def run(args: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code if isinstance(stop.code, int) else 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def adapter_cases():
    specs = [("missing", s) for s in MISSING_PATHS] + [("malformed", s) for s in MALFORMED_REFS]
    specs += [("unstored", s) for s in UNSTORED_REFS] + [("file", None)]
    return [pytest.param(command, kind, spec, id=f"{command}-{kind}-{spec}") for command, (kind, spec) in
            itertools.product(COMMANDS, specs)]


@pytest.mark.parametrize("command, kind, spec", adapter_cases())
def test_bad_adapter_is_one_line_naming_it(command, kind, spec, env, capsys):
    spec = env["file"] if spec is None else spec
    code, lines = run(argv(command, env, "--adapter", spec), capsys)
    assert code != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"adapterkit {command}: error:"), lines
    assert spec.split("@")[0] in lines[0] or repr(spec)[1:-1] in lines[0], lines  # names what was given


def number_cases():
    cases = [(command, flag, value) for command in COMMANDS for flag, values in BAD_NUMBERS.items() for value in values]
    cases += [(command, "--temperature", value) for command in ("generate", "chat") for value in BAD_TEMPERATURES]
    return [pytest.param(*case, id="-".join(case)) for case in cases]


@pytest.mark.parametrize("command, flag, value", number_cases())
def test_out_of_range_settings_are_one_line(command, flag, value, env, capsys):
    code, lines = run(argv(command, env, f"{flag}={value}"), capsys)
    assert code == 2
    assert len(lines) == 1 and flag.strip("-").replace("-", " ") in lines[0].replace("-", " "), lines


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    ("", "holds no examples"),
    ("\n\n", "holds no examples"),
    ("{not json\n", "not valid JSON"),
    ('{"prompt": "only"}\n', '"prompt" and "response"'),
    ("[1, 2]\n", "JSON object"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', "last message"),
])
def test_bad_held_out_data_is_one_line(content, fragment, env, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    if content is not None:
        data.write_text(content)
    code, lines = run(["eval", "--base", str(tmp_path / "no-such-base"), "--data", str(data)], capsys)
    assert code == 2 and len(lines) == 1 and fragment in lines[0], lines


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_base_is_one_line(command, env, capsys):
    code, lines = run(argv(command, env, "--threads", "1"), capsys)
    assert code == 2 and len(lines) == 1 and "no-such-base" in lines[0] and "does not exist" in lines[0], lines
