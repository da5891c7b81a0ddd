"""`${{ secrets.NAME }}` references in env values (boxrun/services/secrets.py), and the pipeline
matrix substitution leaving them alone."""

from __future__ import annotations

import json

import pytest

from boxrun.pipelines.definition import parse_definition
from boxrun.services.secrets import env_references, references, substitute, valid_name


def test_a_whole_value_and_one_inside_a_longer_string() -> None:
    assert references("${{ secrets.DB_PASSWORD }}") == ["DB_PASSWORD"]
    assert references("postgres://app:${{ secrets.DB_PASSWORD }}@db/app") == ["DB_PASSWORD"]
    assert references("${{secrets.A}}-${{  secrets.B_2  }}-${{ secrets.A }}") == ["A", "B_2", "A"]


def test_not_references() -> None:
    for text in ("plain", "${{ matrix.x }}", "${ secrets.A }", "$secrets.A", "${{ secret.A }}", "${{ secrets.A }"):
        assert references(text) == [], text


@pytest.mark.parametrize("name", ["lower", "A-B", "1ABC", "", "A" * 129, "A B"])
def test_a_reference_to_a_name_no_secret_can_have_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="a secret name is"):
        references(f"${{{{ secrets.{name} }}}}")


def test_env_references_name_the_key() -> None:
    env = {"PLAIN": "x", "URL": "u:${{ secrets.PW }}@h", "TOKEN": "${{ secrets.TOKEN }}"}
    assert env_references(env) == {"URL": ["PW"], "TOKEN": ["TOKEN"]}
    with pytest.raises(ValueError, match="^env BAD: "):
        env_references({"BAD": "${{ secrets.bad }}"})


def test_substitute_replaces_each_reference_once() -> None:
    values = {"PW": "p@ss ${{ secrets.OTHER }}", "U": "app"}
    assert substitute("${{ secrets.U }}:${{secrets.PW}}@h", values) == "app:p@ss ${{ secrets.OTHER }}@h"
    assert substitute("no reference", {}) == "no reference"


def test_names() -> None:
    assert valid_name("A") and valid_name("_X9") and valid_name("A" * 128)
    assert not valid_name("A" * 129) and not valid_name("a") and not valid_name("9A")


def test_the_matrix_substitution_leaves_secret_references_alone() -> None:
    body = {
        "env": {"TOKEN": "${{ secrets.TOKEN }}"},
        "steps": {
            "t": {
                "box": "b",
                "matrix": {"v": ["1", "2"]},
                "script": "echo ${{ matrix.v }}",
                "env": {"V": "${{ matrix.v }}", "PW": "${{ secrets.PW }}-${{ matrix.v }}"},
            }
        },
    }
    p = parse_definition(json.dumps(body).encode(), "application/json")
    envs = {s.name: s.job.env for s in p.steps}
    assert envs == {
        "t[v=1]": {"TOKEN": "${{ secrets.TOKEN }}", "V": "1", "PW": "${{ secrets.PW }}-1"},
        "t[v=2]": {"TOKEN": "${{ secrets.TOKEN }}", "V": "2", "PW": "${{ secrets.PW }}-2"},
    }
