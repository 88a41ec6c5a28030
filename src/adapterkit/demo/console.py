"""Rendering helpers for the demo: sections and tables, readable at a glance."""

from __future__ import annotations

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

# Byte counts print in binary units everywhere; adapterkit.files owns the format.

console = Console(highlight=False)


def section(number: int, title: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{number}. {title}", align="left"))


def table(title: str, columns: list[str], rows: list[list[object]]) -> None:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*[str(cell) for cell in row])
    console.print(out)


def say(text: str) -> None:
    console.print(text)

