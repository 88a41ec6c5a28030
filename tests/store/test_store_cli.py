"""`adapterkit store ...` through the real argument parser."""

from __future__ import annotations

import json

import pytest
from store_helpers import FINGERPRINT_A, folder_bytes

from adapterkit.cli.store_commands import SUBCOMMANDS
from adapterkit.cli.store_commands import main as store_main


@pytest.fixture
def cli(tmp_path, capsys, open_store):
    root = str(tmp_path / "cli-store")

    def run(*argv: str) -> tuple[int, str, str]:
        code = store_main(["store", *open_store.cli_args(root), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    run.root = root
    run.open = lambda: open_store(root)
    return run


@pytest.mark.parametrize("subcommand", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(subcommand, capsys):
    with pytest.raises(SystemExit) as info:
        store_main(["store", subcommand, "--help"])
    assert info.value.code == 0
    assert "usage: adapterkit store " + subcommand in capsys.readouterr().out


def test_put_ls_get_tag_rm_round_trip(cli, make_folder, tmp_path):
    source = make_folder(base=FINGERPRINT_A)
    code, out, _ = cli("put", str(source), "math", "--meta", "em=0.8", "--meta", "data=abc", "--tag", "prod")
    assert code == 0 and "stored math@1" in out and "tiny-base-a" in out
    cli("put", str(make_folder()), "math")

    code, out, _ = cli("ls")
    assert code == 0 and "math@1" in out and "math@2" in out and "prod" in out and "2 stored version(s)" in out
    code, out, _ = cli("ls", "--base", "tiny-base-a", "--json")
    listed = json.loads(out)
    assert [r["ref"] for r in listed] == ["math@1"]
    assert listed[0]["metadata"] == {"em": 0.8, "data": "abc"}

    code, out, _ = cli("get", "math@prod", str(tmp_path / "out"))
    assert code == 0 and folder_bytes(tmp_path / "out") == folder_bytes(source)

    assert cli("tag", "math@2", "prod")[0] == 0
    assert json.loads(cli("ls", "--tag", "prod", "--json")[1])[0]["ref"] == "math@2"
    assert cli("tag", "--delete", "math", "prod")[0] == 0

    code, out, _ = cli("rm", "math@1")
    assert code == 0 and "removed math@1" in out
    code, out, _ = cli("gc", "--grace", "0")
    assert code == 0 and "deleted 1 unreferenced file(s)" in out


def test_errors_are_one_line_and_non_zero(cli, tmp_path):
    code, out, err = cli("get", "missing@3", str(tmp_path / "o"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("adapterkit store get: error: no adapter named 'missing'")
    code, _, err = cli("put", str(tmp_path / "nope"), "x")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, _, err = cli("put", str(tmp_path), "bad name")
    assert code == 2 and "not a valid adapter name" in err


def test_verify_exits_non_zero_and_names_the_damaged_adapter(cli, make_folder):
    cli("put", str(make_folder()), "fine")
    cli("put", str(make_folder()), "broken")
    assert cli("verify")[0] == 0
    store = cli.open()
    record = store.resolve("broken")
    weights = next(f for f in store.index.files(record) if f.path.endswith(".safetensors"))
    store.blobs.path(weights.blob).write_bytes(b"x" * 10)
    code, out, _ = cli("verify")
    assert code == 1
    assert "CORRUPT broken@1 adapter_model.safetensors" in out and "fine@1" not in out


def test_du_export_import(cli, make_folder, tmp_path):
    cli("put", str(make_folder(seed=1)), "a")
    cli("put", str(make_folder(seed=1)), "b")  # identical: deduplicated
    code, out, _ = cli("du", "--json")
    usage = json.loads(out)
    assert code == 0 and usage["versions"] == 2 and usage["dedupe_ratio"] == pytest.approx(2.0)
    code, out, _ = cli("du")
    assert code == 0 and "2.00x dedupe" in out
    assert cli("export", str(tmp_path / "a.tar"), "a")[0] == 0
    code, out, _ = cli("import", str(tmp_path / "a.tar"))
    assert code == 0 and "imported 1 version(s): a@2" in out


def test_main_cli_registers_store():
    from adapterkit.cli.main import build_parser

    args = build_parser().parse_args(["store", "ls", "--latest"])
    assert args.store_command == "ls" and args.latest


def test_long_listings_print_aligned_plain_rows(cli, make_folder, monkeypatch):
    from adapterkit.cli import store_commands

    monkeypatch.setattr(store_commands, "_RICH_ROWS", 1)
    cli("put", str(make_folder()), "p")
    cli("put", str(make_folder()), "p")
    code, out, _ = cli("ls")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "2 stored version(s)"
    assert lines[1].split()[:3] == ["ref", "tags", "method"]
    assert lines[3].startswith("p@1 ") and lines[4].startswith("p@2 ")


@pytest.mark.parametrize("tag", ["latest", "bad tag", "7"])
def test_put_with_a_bad_tag_stores_nothing(cli, make_folder, tmp_path, tag):
    code, out, err = cli("put", str(make_folder()), "x", "--tag", "ok", "--tag", tag)
    assert code == 2 and out == "" and err.count("\n") == 1 and "not a valid tag" in err
    assert not (tmp_path / "cli-store").exists()  # refused before the store was even opened
    assert cli("put", str(make_folder()), "x", "--tag", "ok")[0] == 0
    code, out, err = cli("put", str(make_folder()), "x", "--tag", tag)
    assert code == 2
    assert [r.ref for r in cli.open().ls()] == ["x@1"]
    assert len(list(cli.open().blobs.iter_blobs())) == 2


@pytest.mark.parametrize("backend", ["postgres"])  # the option exists for the PostgreSQL index only
def test_store_url_comes_from_the_environment_too(open_store, make_folder, tmp_path, monkeypatch, capsys):
    root = tmp_path / "env-store"
    url = open_store.cli_args(root)[-1]
    monkeypatch.setenv("ADAPTERKIT_STORE_URL", url)
    assert store_main(["store", "--root", str(root), "put", str(make_folder()), "via-env"]) == 0
    assert "stored via-env@1" in capsys.readouterr().out
    assert [r.ref for r in open_store(root).ls()] == ["via-env@1"]
    assert not (root / "index.sqlite").exists()  # the index went to the server
