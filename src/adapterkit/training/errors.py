"""Errors raised while reading training data or resuming training."""

from __future__ import annotations

from adapterkit.errors import AdapterError


class TrainingDataError(AdapterError, ValueError):
    """A JSONL line is not a {"prompt", "response"} or {"messages": [...]} record."""


class ChatTemplateError(AdapterError, ValueError):
    """The tokenizer has no chat template, or its template cannot mark where responses start."""


class CheckpointError(AdapterError, ValueError):
    """A training checkpoint is missing, incomplete, or does not fit the model and settings."""
