"""A config file's bytes -> its top-level JSON object, for files that may be hostile.

Python's json module fails on some inputs with errors that name nothing: bytes that are not
UTF-8, nesting deeper than the recursion limit, integers too long to convert. Here each becomes
an AdapterConfigError that names the field at fault when one is.
"""

from __future__ import annotations

import json
from typing import Any

from adapterkit.core.config_checks import OversizedInteger, shown
from adapterkit.errors import AdapterConfigError


def _parse_int(text: str) -> int | OversizedInteger:
    return int(text) if len(text) <= 4000 else OversizedInteger(len(text))


def read_json_object(raw: bytes, path: str) -> dict[str, Any]:
    """The config file's top-level object. Every failure names the field when one is at fault."""
    # Undecodable bytes become lone surrogates, so the JSON still parses and the field that holds
    # them can be named below.
    text = raw.decode("utf-8", errors="surrogateescape")
    try:
        data = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        field, snippet = _field_too_deep(text)
        raise AdapterConfigError(
            f"{path} is not a valid LoRA config: {field} is {snippet!r}..., nested deeper than "
            "Python can parse; expected a JSON object of flat values (numbers, strings, lists of strings)."
        ) from None
    except ValueError as exc:  # JSONDecodeError, or a number the parser refuses
        raise AdapterConfigError(f"{path} is not valid JSON ({exc}); re-save the adapter.") from None
    if not isinstance(data, dict):
        raise AdapterConfigError(f"{path} must hold a JSON object, found {shown(data)}.")
    for key, value in data.items():
        if _has_undecodable(key) or _has_undecodable(value):
            raise AdapterConfigError(
                f"{path} is not a valid LoRA config: field {key.encode('utf-8', 'backslashreplace').decode()} "
                f"holds bytes that are not UTF-8 ({shown(value)}); expected UTF-8 text, "
                "as JSON requires: re-save the file as UTF-8."
            )
    return data


def _has_undecodable(value: Any) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, list):
        return any(_has_undecodable(v) for v in value)
    if isinstance(value, dict):
        return any(_has_undecodable(k) or _has_undecodable(v) for k, v in value.items())
    return False


def _field_too_deep(text: str) -> tuple[str, str]:
    """("field NAME", start of its value) for the top-level field whose value overflows the parser."""
    decoder = json.JSONDecoder()
    if not text.lstrip().startswith("{"):
        return "the top-level value", text.lstrip()[:24]
    try:
        return _walk_fields(text, decoder, text.index("{") + 1)
    except (ValueError, IndexError):  # malformed beyond the deep part: name what we can
        return "a field", text[:24]


def _walk_fields(text: str, decoder: json.JSONDecoder, position: int) -> tuple[str, str]:
    while True:
        key_start = text.index('"', position)
        key, position = decoder.raw_decode(text, key_start)
        position = text.index(":", position) + 1
        while text[position] in " \t\r\n":
            position += 1
        try:
            _, position = decoder.raw_decode(text, position)
        except RecursionError:
            return f"field {key}", text[position:position + 24]
        position = text.index(",", position) + 1
