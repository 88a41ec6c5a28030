"""The shell commands of one README block, so tests run exactly what the README tells users to run."""

from __future__ import annotations

import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands(marker: str) -> list[list[str]]:
    """argv of each command in the first ```bash block after `<!-- marker`."""
    text = README.read_text(encoding="utf-8")
    opening = text.index("```bash\n", text.index(f"<!-- {marker}")) + len("```bash\n")
    block = text[opening: text.index("\n```", opening)]
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def substitute(argv: list[str], replacements: dict[str, str]) -> list[str]:
    return [replacements.get(arg, arg) for arg in argv]
