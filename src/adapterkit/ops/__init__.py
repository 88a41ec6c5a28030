"""Whole-adapter operations behind the CLI: inspect, verify, merge, convert."""
