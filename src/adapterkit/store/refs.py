"""Names and references: `name`, `name@3`, `name@latest`, `name@tag`."""

from __future__ import annotations

import re

from adapterkit.store.errors import InvalidStoreRefError

# Like Hugging Face repo ids: segments of letters, digits, `.`, `_`, `-`, joined by `/`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
_TAG = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")
# ASCII digits only: str.isdigit() and int() also take '²' and '١', which would raise or
# silently address another version. 18 digits keep every version inside SQLite's 64-bit integers.
_VERSION = re.compile(r"[0-9]{1,18}")
_MAX_NAME = 200
_MAX_TAG = 64


def check_name(name: str) -> str:
    if not isinstance(name, str) or len(name) > _MAX_NAME or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidStoreRefError(
            f"{name!r} is not a valid adapter name: use letters, digits, '.', '_', '-' "
            f"(and '/' between parts), at most {_MAX_NAME} characters"
        )
    return name


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or len(tag) > _MAX_TAG or not _TAG.fullmatch(tag) or tag == "latest":
        raise InvalidStoreRefError(
            f"{tag!r} is not a valid tag: start with a letter or '_', then letters, digits, '.', '_', '-'; "
            f"'latest' is reserved and version numbers cannot be tags"
        )
    return tag


def parse_ref(ref: str) -> tuple[str, int | str]:
    """`name@3` -> ("name", 3); `name` and `name@latest` -> ("name", "latest"); `name@prod` -> ("name", "prod")."""
    if not isinstance(ref, str):
        raise InvalidStoreRefError(f"an adapter reference must be a string like 'name@3', got {ref!r}")
    name, at, selector = ref.partition("@")
    check_name(name)
    if not at or selector == "latest":
        return name, "latest"
    if _VERSION.fullmatch(selector):
        version = int(selector)
        if version < 1:
            raise InvalidStoreRefError(f"{ref!r}: versions start at 1")
        return name, version
    if selector[:1].isdigit() or selector[:1].isnumeric():
        raise InvalidStoreRefError(
            f"{ref!r}: a version is 1 to 18 ASCII digits (name@3); tags start with a letter or '_'"
        )
    return name, check_tag(selector)
