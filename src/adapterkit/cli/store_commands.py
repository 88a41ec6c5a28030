"""`adapterkit store ls|put|get|rm|tag|verify|gc|du|export|import`: wiring and printing only.

Every runner is a few lines over `adapterkit.store.AdapterStore`; errors end in
one line on stderr and exit status 2, a failed `verify` in status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from datetime import datetime

from adapterkit.errors import AdapterError
from adapterkit.files import format_bytes

# name -> (help, add_arguments, run); the runners are defined below.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "ls": ("list stored adapter versions (filter by name/glob, base, tag)", "_add_ls", "_run_ls"),
    "put": ("store a PEFT adapter folder as the next version of NAME", "_add_put", "_run_put"),
    "get": ("write a stored version out as a PEFT folder", "_add_get", "_run_get"),
    "rm": ("remove versions (NAME removes all of them); blobs go at the next gc", "_add_rm", "_run_rm"),
    "tag": ("point a tag at a version, or delete a tag", "_add_tag", "_run_tag"),
    "verify": ("re-hash every stored file and name the adapters holding damaged ones", "_add_plain", "_run_verify"),
    "gc": ("delete stored files no version references", "_add_gc", "_run_gc"),
    "du": ("bytes stored, against folder copies and full model copies", "_add_json", "_run_du"),
    "export": ("write versions to a tar archive of PEFT folders", "_add_export", "_run_export"),
    "import": ("add every adapter of a tar archive as new versions", "_add_import", "_run_import"),
}


def add_store_parser(subparsers) -> argparse.ArgumentParser:
    """Register `store` and its subcommands on the main CLI's subparsers."""
    description = "Versioned, content-addressed adapter store (default root: $ADAPTERKIT_HOME/store)."
    store = subparsers.add_parser("store", help="keep many adapters: versioned, verified, bound to their base",
                                  description=description)
    store.add_argument("--root", help="store folder (default: $ADAPTERKIT_HOME/store or ~/.cache/adapterkit/store)")
    store.add_argument("--store-url", default=os.environ.get("ADAPTERKIT_STORE_URL") or None, metavar="URL",
                       help="keep the index in PostgreSQL (postgresql://user@host/db, default $ADAPTERKIT_STORE_URL) "
                            "so many hosts share one store; files then go to ROOT/blobs, a folder they all reach")
    sub = store.add_subparsers(dest="store_command", required=True, metavar="SUBCOMMAND")
    module = sys.modules[__name__]
    for name, (help_text, add_name, run_name) in SUBCOMMANDS.items():
        parser = sub.add_parser(name, help=help_text, description=help_text)
        getattr(module, add_name)(parser)
        parser.set_defaults(run=_guarded(name, getattr(module, run_name)))
    return store


def main(argv: list[str] | None = None) -> int:
    """`python -m adapterkit.cli.store_commands ...`, the same as `adapterkit store ...`."""
    parser = argparse.ArgumentParser(prog="adapterkit")
    add_store_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def _guarded(name: str, run):
    def guarded(args) -> int:
        try:
            return int(run(args) or 0)
        except Exception as exc:
            if not isinstance(exc, (AdapterError, OSError, ValueError, KeyError, sqlite3.Error)) \
                    and not type(exc).__module__.startswith("psycopg"):
                raise
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"adapterkit store {name}: error: {text}", file=sys.stderr)
            return 2

    return guarded


def _store(args):
    from pathlib import Path

    from adapterkit.store import AdapterStore, default_store_root

    if args.store_url:
        return AdapterStore(args.store_url, blobs=Path(args.root or default_store_root()) / "blobs")
    return AdapterStore(args.root)


def _console():
    from rich.console import Console

    # Piped output (grep, files) gets whole rows instead of rich's 80-column default.
    return Console() if sys.stdout.isatty() else Console(width=200)


# --- arguments ------------------------------------------------------------
def _add_plain(parser: argparse.ArgumentParser) -> None:
    pass


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", help="only adapters trained on this base (name, or fingerprint prefix)")
    parser.add_argument("--tag", help="only versions carrying this tag")


def _add_ls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="adapter name, or a glob such as 'math-*'")
    _add_filters(parser)
    parser.add_argument("--latest", action="store_true", help="only the latest version of each name")
    parser.add_argument("--limit", type=int, default=None, help="show at most this many rows")
    _add_json(parser)


def _add_put(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="PEFT adapter folder (holds adapter_config.json)")
    parser.add_argument("name", help="name to store it under; each put adds version 1, 2, 3, ...")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                        help="metadata entry (VALUE parsed as JSON when it is JSON); repeatable")
    parser.add_argument("--meta-json", help="metadata as a JSON object, or @file.json")
    parser.add_argument("--tag", action="append", default=[], help="tag the new version; repeatable")


def _add_get(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="NAME, NAME@3, NAME@latest or NAME@TAG")
    parser.add_argument("destination", help="folder to write (must not exist, or be empty)")


def _add_rm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("refs", nargs="+", metavar="ref", help="NAME@3 / NAME@TAG (one version) or NAME (all)")


def _add_tag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", help="version to tag (NAME@3, NAME@latest, ...); with --delete: NAME")
    parser.add_argument("tag", help="tag name ('prod', 'v1.2', ...)")
    parser.add_argument("--delete", action="store_true", help="remove the tag instead")


def _add_gc(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grace", type=float, default=60.0, metavar="SECONDS",
                        help="keep unreferenced files younger than this (default 60)")


def _add_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", help="archive to write (.tar, or .tar.gz / .tgz to compress)")
    parser.add_argument("refs", nargs="*", metavar="ref", help="versions to export (default: all matching filters)")
    parser.add_argument("--name", help="only this name (or glob)")
    _add_filters(parser)


def _add_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", help="tar archive written by `store export`, or a tar of PEFT folders")
    parser.add_argument("--no-tags", action="store_true", help="do not re-apply the archive's tags")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="also import archives without per-file SHA-256 (older exports, plain tars)")


# --- runners ------------------------------------------------------------
def _run_ls(args) -> int:
    records = _store(args).ls(args.name, base=args.base, tag=args.tag, latest_only=args.latest)
    shown = records[: args.limit] if args.limit is not None else records
    if args.json:
        print(json.dumps([_record_dict(r) for r in shown]))
        return 0
    title = f"{len(records)} stored version(s)" + (f", {len(shown)} shown" if shown != records else "")
    rows = [_ls_row(r) for r in shown]
    if len(rows) > _RICH_ROWS:
        # rich measures every cell (about 1 ms a row): past a screenful, align columns directly.
        _print_plain_table(title, _LS_COLUMNS, rows)
        return 0
    from rich.table import Table

    table = Table(title=title)
    for column in _LS_COLUMNS:
        table.add_column(column, justify="right" if column in _RIGHT else "left", no_wrap=column != "targets")
    for row in rows:
        table.add_row(*row)
    _console().print(table)
    return 0


_LS_COLUMNS = ("ref", "tags", "method", "rank", "alpha", "targets", "params", "size", "base", "created")
_RIGHT = ("rank", "alpha", "params", "size")
_RICH_ROWS = 500


def _ls_row(r) -> tuple[str, ...]:
    s = r.summary
    targets = s.targets if isinstance(s.targets, str) or s.targets is None else ",".join(s.targets)
    return (
        r.ref, ",".join(r.tags), s.method, str(s.rank or ""), _number(s.alpha), str(targets or ""),
        f"{s.parameter_count:,d}", format_bytes(s.bytes), (r.base.name or r.base.fingerprint[:12]) if r.base else "",
        datetime.fromtimestamp(r.created_at).strftime("%Y-%m-%d %H:%M"),
    )


def _print_plain_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]

    def line(cells) -> str:
        return "  ".join(
            cell.rjust(w) if col in _RIGHT else cell.ljust(w) for cell, w, col in zip(cells, widths, columns)
        ).rstrip()

    out = [title, line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in rows)
    sys.stdout.write("\n".join(out) + "\n")


def _run_put(args) -> int:
    from adapterkit.store.refs import check_name, check_tag

    # Every argument is checked before the store is even opened: a bad --tag stores nothing.
    metadata = _metadata(args.meta, args.meta_json)
    check_name(args.name)
    for tag in args.tag:
        check_tag(tag)
    record = _store(args).put_folder(args.folder, args.name, metadata=metadata, tags=args.tag)
    base = f", base {record.base.describe()}" if record.base else ", no base fingerprint recorded"
    print(f"stored {record.ref} ({record.summary.parameter_count:,d} parameters, {format_bytes(record.summary.bytes)}{base})")
    return 0


def _run_get(args) -> int:
    store = _store(args)
    record = store.resolve(args.ref)
    folder = store.get(record.ref, args.destination)
    print(f"wrote {record.ref} to {folder}")
    return 0


def _run_rm(args) -> int:
    store = _store(args)
    for ref in args.refs:
        removed = store.rm(ref)
        print(f"removed {', '.join(r.ref for r in removed)}")
    return 0


def _run_tag(args) -> int:
    store = _store(args)
    if args.delete:
        if not store.untag(args.ref.partition("@")[0], args.tag):
            raise ValueError(f"{args.ref} has no tag {args.tag!r}")
        print(f"removed tag {args.tag} from {args.ref.partition('@')[0]}")
        return 0
    record = store.tag(args.ref, args.tag)
    print(f"{record.name}@{args.tag} -> {record.ref}")
    return 0


def _run_verify(args) -> int:
    report = _store(args).verify()
    for c in report.corrupt:
        print(f"CORRUPT {c.ref} {c.path}: {c.problem} (blob {c.blob[:12]})")
    status = "ok" if report.ok else f"{len(report.damaged_refs)} damaged version(s)"
    print(f"checked {report.blobs_checked} stored file(s) used {report.files_checked} time(s): {status}")
    return 0 if report.ok else 1


def _run_gc(args) -> int:
    report = _store(args).gc(grace_s=args.grace)
    print(f"deleted {report.blobs_deleted} unreferenced file(s), freed {format_bytes(report.bytes_freed)}"
          + (f"; removed {report.temporaries_removed} stale temporary file(s)" if report.temporaries_removed else ""))
    return 0


def _run_du(args) -> int:
    usage = _store(args).du()
    if args.json:
        from dataclasses import asdict

        print(json.dumps({**asdict(usage), "dedupe_ratio": usage.dedupe_ratio,
                          "savings_vs_full_copies": usage.savings_vs_full_copies}, indent=1, sort_keys=True))
        return 0
    from rich.table import Table

    table = Table(title=f"{usage.versions} version(s) of {usage.names} adapter(s)")
    table.add_column("what")
    table.add_column("bytes", justify="right")
    table.add_column("", justify="right")
    table.add_row("stored (unique files)", format_bytes(usage.stored_bytes), "")
    table.add_row("as separate folders", format_bytes(usage.logical_bytes), f"{usage.dedupe_ratio:.2f}x dedupe")
    if usage.full_copy_bytes is not None:
        ratio = usage.savings_vs_full_copies
        table.add_row(f"as full model copies ({usage.versions_with_known_base} with known base size)",
                      format_bytes(usage.full_copy_bytes), f"{ratio:,.0f}x larger" if ratio else "")
    else:
        table.add_row("as full model copies", "unknown", "put from a model to record base sizes")
    table.add_row("unreferenced (freed by gc)", format_bytes(usage.unreferenced_bytes), "")
    table.add_row("index", format_bytes(usage.index_bytes), "")
    _console().print(table)
    return 0


def _run_export(args) -> int:
    records = _store(args).export(args.archive, args.refs or None, name=args.name, base=args.base, tag=args.tag)
    print(f"exported {len(records)} version(s) to {args.archive}")
    return 0


def _run_import(args) -> int:
    records = _store(args).import_(args.archive, tags=not args.no_tags, allow_unverified=args.allow_unverified)
    print(f"imported {len(records)} version(s): {', '.join(r.ref for r in records[:20])}"
          + (" ..." if len(records) > 20 else ""))
    return 0


# --- helpers ------------------------------------------------------------
def _metadata(entries: list[str], raw_json: str | None) -> dict:
    metadata: dict = {}
    if raw_json:
        text = open(raw_json[1:], encoding="utf-8").read() if raw_json.startswith("@") else raw_json
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--meta-json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError("--meta-json must be a JSON object")
        metadata.update(loaded)
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not eq or not key:
            raise ValueError(f"--meta takes KEY=VALUE, got {entry!r}")
        try:
            metadata[key] = json.loads(value)
        except json.JSONDecodeError:
            metadata[key] = value
    return metadata


def _record_dict(record) -> dict:
    # Plain dicts, not dataclasses.asdict: asdict deep-copies and costs most of `ls --json` at 10k rows.
    s, b = record.summary, record.base
    return {
        "ref": record.ref, "name": record.name, "version": record.version, "tags": list(record.tags),
        "created_at": record.created_at,
        "summary": {"method": s.method, "rank": s.rank, "alpha": s.alpha, "targets": s.targets,
                    "parameter_count": s.parameter_count, "bytes": s.bytes, "adapters": s.adapters},
        "base": {"name": b.name, "fingerprint": b.fingerprint, "architecture": b.architecture} if b else None,
        "metadata": record.metadata,
    }


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


if __name__ == "__main__":
    sys.exit(main())
