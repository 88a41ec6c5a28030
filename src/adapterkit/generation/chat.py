"""An interactive chat over one base with several adapters, switched between turns.

`ChatSession` holds the model, the conversation and which adapter answers;
`run_chat` reads lines (a terminal, a pipe, a tmux pane), treats `/...` lines as
commands and streams every reply as it is generated.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TextIO

from adapterkit.errors import AdapterError
from adapterkit.generation.sources import AdapterSource, load_sources, resolve_sources
from adapterkit.generation.text import SamplingSettings, stream_text

HELP = """commands:
  /adapter NAME      answer with a loaded adapter (by name), or load a folder or store ref and use it
  /base              answer with the base model alone
  /adapters          list the loaded adapters
  /reset             start a new conversation
  /help              this list
  /quit              leave (so does end of input)
switching adapter or base starts a new conversation: the earlier replies came from another model."""


class ChatSession:
    """A conversation with `model` (an AdapterModel); `adapter` None means the base alone."""

    def __init__(self, model, tokenizer, settings: SamplingSettings, sources: Iterable[AdapterSource] = (),
                 store_root: str | os.PathLike[str] | None = None) -> None:
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.store_root = store_root
        self.sources: list[AdapterSource] = list(sources)
        self.history: list[dict[str, str]] = []
        self.adapter: AdapterSource | None = None
        if self.sources:
            self.use(self.sources[0].spec)
        else:
            self.use_base()

    @property
    def label(self) -> str:
        return self.adapter.short_name if self.adapter is not None else "base"

    def find(self, spec: str) -> AdapterSource | None:
        """The loaded adapter `spec` names: as typed at load, its short name, or its model name."""
        for source in self.sources:
            if spec in (source.spec, source.short_name, source.name):
                return source
        return None

    def use(self, spec: str) -> AdapterSource:
        """Answer with adapter `spec` from now on, loading it first if it is a new folder or ref."""
        source = self.find(spec)
        if source is None:
            [source] = resolve_sources([spec], self.store_root, taken=[s.name for s in self.sources])
            load_sources(self.model, [source], self.store_root)
            self.sources.append(source)
        self.model.enable_adapters()
        self.model.set_adapter(source.name)
        self.adapter = source
        self.history = []
        return source

    def use_base(self) -> None:
        self.model.disable_adapters()
        self.adapter = None
        self.history = []

    def reset(self) -> None:
        self.history = []

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the turn joins the conversation once it is complete."""
        messages = [*self.history, {"role": "user", "content": text}]
        pieces = []
        for piece in stream_text(self.model, self.tokenizer, messages, self.settings):
            pieces.append(piece)
            yield piece
        self.history = [*messages, {"role": "assistant", "content": "".join(pieces).strip()}]


def run_chat(session: ChatSession, lines: Iterable[str], out: TextIO, err: TextIO, prompt: bool = False) -> int:
    """Answer each line of `lines`, streaming to `out`; command feedback and errors go to `err`.

    With `prompt`, an interactive terminal, show `label> ` before each line.
    """
    def show_prompt() -> None:
        if prompt:
            out.write(f"{session.label}> ")
            out.flush()

    show_prompt()
    for raw in lines:
        line = raw.strip()
        if not line:
            show_prompt()
            continue
        if line.startswith("/"):
            if _command(session, line, err) == "quit":
                return 0
        else:
            for piece in session.reply(line):
                out.write(piece)
                out.flush()
            out.write("\n")
            out.flush()
        show_prompt()
    return 0


def _command(session: ChatSession, line: str, err: TextIO) -> str | None:
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    try:
        if name in ("/quit", "/exit"):
            return "quit"
        if name == "/help":
            err.write(HELP + "\n")
        elif name == "/adapter" and argument:
            source = session.use(argument)
            err.write(f"using adapter {source.short_name} ({source.spec}); new conversation\n")
        elif name == "/base" and not argument:
            session.use_base()
            err.write("using the base model alone; new conversation\n")
        elif name == "/adapters" and not argument:
            for source in session.sources:
                mark = "*" if source is session.adapter else " "
                err.write(f"{mark} {source.short_name}  ({source.spec})\n")
            if not session.sources:
                err.write("no adapter loaded; /adapter DIR|REF loads one\n")
        elif name == "/reset" and not argument:
            session.reset()
            err.write("new conversation\n")
        else:
            err.write(f"unknown command {line!r}\n{HELP}\n")
    except (AdapterError, OSError, ValueError, KeyError) as exc:
        # A bad /adapter keeps the session as it was; say why in one line and go on.
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        err.write(f"error: {text}\n")
    err.flush()
    return None
