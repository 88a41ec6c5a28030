import json

import pytest

from adapterkit.training.data import ChatExample, load_jsonl, write_jsonl
from adapterkit.training.errors import TrainingDataError


def test_reads_both_formats(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        json.dumps({"prompt": "cat dog", "response": "dog cat"}) + "\n\n"
        + json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                   {"role": "assistant", "content": "a"}]}) + "\n"
    )
    first, second = load_jsonl(path)
    assert first.prompt_messages == [{"role": "user", "content": "cat dog"}] and first.response == "dog cat"
    assert [m["role"] for m in second.messages] == ["system", "user", "assistant"] and second.response == "a"


def test_round_trip(tmp_path):
    examples = [ChatExample.from_prompt("a", "b", system="s"), ChatExample.from_prompt("c", "d")]
    write_jsonl(tmp_path / "x.jsonl", examples)
    assert load_jsonl(tmp_path / "x.jsonl") == examples


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "only"}', '"prompt" and "response"'),
    ("[1, 2]", "JSON object"),
    ("{not json", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "messages[0]"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "response": "ok"}\n' + line + "\n")
    with pytest.raises(TrainingDataError) as raised:
        load_jsonl(path)
    assert f"{path}:2" in str(raised.value) and fragment in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_jsonl(tmp_path / "absent.jsonl")
