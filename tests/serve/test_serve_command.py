"""`adapterkit serve`'s checks before any port opens: bad options, and a start-up adapter that fails
to load, end the command with the error. (The command as a real subprocess, printing its address
and draining on SIGTERM, is run by test_readme_serving.)"""

from __future__ import annotations

from serve_helpers import free_port

from adapterkit.cli.main import main


def test_a_start_up_adapter_that_fails_to_load_exits_with_the_error(base_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    assert main(["serve", "--base", str(base_dir), "--port", str(free_port()), "--adapter", f"bad={broken}"]) == 2
    out, err = capsys.readouterr()
    assert "adapterkit serve: error:" in err and "broken" in err and "listening" not in out


def test_bad_options_fail_before_loading(tmp_path, capsys):
    for options in (["--adapter", "noequals"], ["--adapter", f"x={tmp_path / 'missing'}"], ["--max-batch", "0"],
                    ["--adapter", f"x={tmp_path}", "--adapter", f"x={tmp_path}"], ["--api-key", " "]):
        assert main(["serve", "--base", str(tmp_path / "nowhere"), *options]) == 2, options
        assert "adapterkit serve: error:" in capsys.readouterr().err, options
