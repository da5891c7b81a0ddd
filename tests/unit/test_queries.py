import re

import pytest

from boxrun.db.queries import Q, parse


def test_parse_named_queries():
    q = parse("-- name: a\nSELECT 1;\n\n-- name: b\nSELECT $1;\n")
    assert q == {"a": "SELECT 1;", "b": "SELECT $1;"}


def test_duplicate_names_are_an_error():
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


def test_every_query_uses_bind_parameters_not_formatting():
    for name, sql in Q._q.items():
        assert "{" not in sql and "%s" not in sql, name
        assert not re.search(r"'\s*\|\|", sql), name


def test_unknown_query_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no SQL query named"):
        Q.no_such_query
