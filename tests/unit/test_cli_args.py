"""The CLI's compound arguments: --file PATH[:DEST], --env/--label KEY=VALUE, -p NAME=VALUE typed by a
template's params; sizes and days."""

from __future__ import annotations

from pathlib import Path

import pytest

from boxrun.cli.args import (
    ArgumentError,
    days,
    file_spec,
    file_specs,
    key_value,
    key_values,
    size,
    template_params,
    typed_value,
)
from boxrun.cli.output import human_bytes


def test_key_value_keeps_empty_values_and_later_equals_signs() -> None:
    assert key_value("A=1", "--env") == ("A", "1")
    assert key_value("A=", "--env") == ("A", "")
    assert key_value("URL=a=b", "--env") == ("URL", "a=b")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("A", "expected KEY=VALUE"), ("=1", "key is empty"), (" A=1", "spaces"), ("", "expected KEY=VALUE")],
)
def test_bad_key_values_name_the_option_and_the_value(raw: str, reason: str) -> None:
    with pytest.raises(ArgumentError) as err:
        key_value(raw, "--env")
    assert str(err.value).startswith(f"--env {raw!r}") and reason in str(err.value)


def test_a_key_given_twice_is_refused() -> None:
    assert key_values(["a=1", "b=2"], "--label") == {"a": "1", "b": "2"}
    assert key_values(None, "--label") == {}
    with pytest.raises(ArgumentError, match="'a' given twice"):
        key_values(["a=1", "a=2"], "--label")


def test_file_spec_by_base_name_or_destination(tmp_path: Path) -> None:
    src = tmp_path / "fw.bin"
    src.write_bytes(b"x")
    assert file_spec(str(src)) == (src, "fw.bin")
    assert file_spec(f"{src}:in/firmware.bin") == (src, "in/firmware.bin")


def test_a_path_with_a_colon_that_exists_is_taken_whole(tmp_path: Path) -> None:
    odd = tmp_path / "a:b.txt"
    odd.write_text("x")
    assert file_spec(str(odd)) == (odd, "a:b.txt")


@pytest.mark.parametrize("raw", ["", ":dest", "{src}:", "/no/such/file", "/no/such:dest", "{dir}"])
def test_bad_file_specs(raw: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(ArgumentError, match="^--file"):
        file_spec(raw.format(src=src, dir=tmp_path))


def test_two_files_to_one_destination_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("1")
    (tmp_path / "b" / "x").write_text("2")
    assert file_specs([str(tmp_path / "a" / "x"), f"{tmp_path / 'b' / 'x'}:y"]) == {
        "x": tmp_path / "a" / "x",
        "y": tmp_path / "b" / "x",
    }
    with pytest.raises(ArgumentError, match="already given"):
        file_specs([str(tmp_path / "a" / "x"), str(tmp_path / "b" / "x")])


# ---------------------------------------------------------------- sizes and days (boxrun org)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1048576", 1048576),
        ("0", 0),
        ("512B", 512),
        ("2K", 2048),
        ("500M", 500 << 20),
        ("10G", 10 << 30),
        ("10g", 10 << 30),
        ("10GiB", 10 << 30),
        ("10GB", 10 << 30),
        (" 10 G ", 10 << 30),
        ("1.5T", 3 << 39),
        ("2P", 2 << 50),
        ("none", None),
        ("NONE", None),
        ("off", None),
    ],
)
def test_sizes_take_binary_suffixes_and_none(raw: str, expected: int | None) -> None:
    assert size(raw, "--storage") == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "expected bytes"),
        ("G", "expected bytes"),
        ("-1", "expected bytes"),
        ("-1G", "expected bytes"),
        ("1.5", "whole number"),
        ("10X", "expected bytes"),
        ("10iB", "expected bytes"),
        ("1.2.3G", "expected bytes"),
        ("\uff11\uff10G", "expected bytes"),  # full-width digits
        ("10G\x00", "expected bytes"),
    ],
)
def test_bad_sizes_name_the_option_and_the_value(raw: str, reason: str) -> None:
    with pytest.raises(ArgumentError) as err:
        size(raw, "--storage")
    assert str(err.value).startswith(f"--storage {raw!r}") and reason in str(err.value)


def test_days_are_whole_numbers_or_none() -> None:
    assert days("30", "--logs-days") == 30
    assert days("none", "--logs-days") is None
    for raw in ("-3", "3.5", "", "thirty", "\u00b2", "1e3"):
        with pytest.raises(ArgumentError, match="whole number of days or none"):
            days(raw, "--logs-days")


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (None, 0, 512, 1536, 10 << 30, 5 << 50, 1 << 62)] == [
        "-",
        "0 B",
        "512 B",
        "1.5 KiB",
        "10.0 GiB",
        "5.0 PiB",
        "4096.0 PiB",
    ]


TYPES = {"board": "string", "image": "choice", "retries": "int", "verbose": "bool"}


def test_template_params_are_typed_by_the_declaration() -> None:
    got = template_params(["board=b=1", "image=nightly", "retries=-3", "verbose=Yes"], TYPES)
    assert got == {"board": "b=1", "image": "nightly", "retries": -3, "verbose": True}
    assert template_params(["retries=+7", "verbose=0", "board="], TYPES) == {
        "retries": 7,
        "verbose": False,
        "board": "",
    }
    assert template_params(["retries= 12 ", "verbose=off"], TYPES) == {"retries": 12, "verbose": False}
    assert template_params(["board=007"], TYPES) == {"board": "007"}  # a string stays text
    assert template_params(None, TYPES) == {}
    for word in ("true", "on", "1", "TRUE"):
        assert typed_value("v", "bool", word) is True


@pytest.mark.parametrize(
    ("raws", "reason"),
    [
        (["retries=2.5"], "retries is an int param, give a whole number"),
        (["retries="], "int param"),
        (["retries=١٢"], "int param"),  # digits, but not ASCII ones
        (["verbose=maybe"], "verbose is a bool param, give true or false"),
        (["colour=red"], "no param 'colour' (its params: board, image, retries, verbose)"),
        (["board=a", "board=b"], "'board' given twice"),
        (["board"], "expected KEY=VALUE"),
    ],
)
def test_bad_template_params_name_the_param(raws: list[str], reason: str) -> None:
    with pytest.raises(ArgumentError) as err:
        template_params(raws, TYPES)
    assert str(err.value).startswith("-p") and reason in str(err.value)


def test_a_template_without_params_says_so() -> None:
    with pytest.raises(ArgumentError, match=r"its params: none"):
        template_params(["x=1"], {})
