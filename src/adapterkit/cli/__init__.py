"""The `adapterkit` command: a thin table of subcommands over importable functions."""
