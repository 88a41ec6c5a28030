"""Adapters for other engines: the outermost layer, importing adapterkit's own and, lazily, the engine's."""
