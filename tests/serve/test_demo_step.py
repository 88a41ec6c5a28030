"""The demo's serving step on the tiny base: concurrent openai-client requests for two adapters
and the base, each reply equal to the in-process one (and a wrong expectation is reported)."""

from __future__ import annotations

from adapterkit.demo.serve_step import serve_and_ask


def test_serve_and_ask_compares_served_replies_with_in_process_ones(base_dir, adapter_dirs, reference, capsys):
    messages = [{"role": "user", "content": "w8 w9 w10"}]
    expected = {name: reference.complete(adapter, reference.chat_ids(messages), 16)[0].strip()
                for name, adapter in (("a00", "a00"), ("a01", "a01"), (str(base_dir), None))}
    adapters = {"a00": adapter_dirs["a00"], "a01": adapter_dirs["a01"]}
    asks = [(name, messages, text) for name, text in expected.items()]
    assert serve_and_ask(str(base_dir), adapters, asks) is True
    assert "server stopped" in capsys.readouterr().out
    wrong = [(asks[0][0], messages, asks[0][2] + " w5")]
    assert serve_and_ask(str(base_dir), adapters, wrong) is False
