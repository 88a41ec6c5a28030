"""Imported first by PostgreSQL-only test modules: skips them, saying why, without psycopg."""

import pytest

pytest.importorskip("psycopg", reason="psycopg is not installed; pip install 'psycopg[binary]'")
