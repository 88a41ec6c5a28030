"""Using a trained adapter: load it by folder or store ref, generate, stream, chat."""

from adapterkit.generation.chat import ChatSession, run_chat
from adapterkit.generation.sources import AdapterSource, load_model, open_model, resolve_sources
from adapterkit.generation.text import SamplingSettings, generate_text, prompt_ids, stream_text

__all__ = [
    "AdapterSource",
    "ChatSession",
    "SamplingSettings",
    "generate_text",
    "load_model",
    "open_model",
    "prompt_ids",
    "resolve_sources",
    "run_chat",
    "stream_text",
]
