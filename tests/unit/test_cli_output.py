"""The CLI's printing: the API's JSON, tables with readable cells, log lines by stream, and its
help (panels, exit-code table), --version and completion."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from boxrun.cli import app
from boxrun.cli.output import as_json, cell, duration, print_table, show_line
from boxrun.schemas import ArtifactPublic, LogLinePublic


def test_json_is_the_models_json_and_lists_are_arrays() -> None:
    art = ArtifactPublic(path="a.txt", size=3, sha256="ab" * 32)
    assert json.loads(as_json(art)) == {"path": "a.txt", "size": 3, "sha256": "ab" * 32}
    assert json.loads(as_json([art, art])) == [art.model_dump(mode="json")] * 2
    assert json.loads(as_json([])) == []
    assert json.loads(as_json({"box": art, "n": 1})) == {"box": art.model_dump(mode="json"), "n": 1}


def test_cells() -> None:
    assert cell(None) == "-" and cell(True) == "yes" and cell(False) == "no"
    assert cell(datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=UTC)) == "2026-01-02 03:04:05"
    assert cell(["a", "b"]) == "a,b" and cell([]) == "-"
    assert cell({"team": "fw", "x": "1"}) == "team=fw,x=1"


def test_durations() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert duration(None, None) == "-"
    assert duration(t0, t0 + timedelta(seconds=12)) == "12s"
    assert duration(t0, t0 + timedelta(seconds=65)) == "1m05s"
    assert duration(t0, None, now=t0 + timedelta(seconds=3)) == "3s"


def test_a_table_keeps_every_cell_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    long_id = "0" * 36
    print_table(["ID", "LABELS"], [[long_id, {"k": "v" * 60}]])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "LABELS"]
    assert out[1].split() == [long_id, "k=" + "v" * 60]


@pytest.mark.parametrize(
    ("stream", "stdout", "stderr"),
    [("stdout", "x\n", ""), ("stderr", "", "x\n"), ("output", "[output] x\n", ""), ("system", "", "[boxrun] x\n")],
)
def test_log_lines_go_to_their_stream(
    stream: str, stdout: str, stderr: str, capsys: pytest.CaptureFixture[str]
) -> None:
    show_line(LogLinePublic(seq=1, ts=datetime.now(UTC), stream=stream, text="x"))  # type: ignore[arg-type]
    assert capsys.readouterr() == (stdout, stderr)


def test_help_groups_operator_commands_apart_and_run_documents_the_exit_codes() -> None:
    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert top.exit_code == 0
    lines = top.stdout.splitlines()

    def at(start: str) -> int:
        return next(i for i, line in enumerate(lines) if line.lstrip("│ ").startswith(start))

    panels = [line.strip("╭─╮ ") for line in lines if line.startswith("╭")]
    assert panels == [
        "Options",
        "Jobs",
        "Pipelines, templates and boxes",
        "Account, users and tokens",
        "Operator commands",
    ]
    operator = next(i for i, line in enumerate(lines) if "Operator commands" in line)
    assert all(
        at(cmd + " ") < operator
        for cmd in ("run", "jobs", "logs", "download", "pipeline", "template", "schedule", "users", "login")
    )
    assert all(at(cmd + " ") > operator for cmd in ("api", "worker", "agent", "migrate", "openapi", "dev"))
    run_help = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"}).stdout
    for line in ("124 the job timed out", "125 boxrun itself failed", "126 the job was unschedulable"):
        assert line in run_help
    assert "123 the job failed without an exit code" in runner.invoke(app, ["logs", "--help"]).stdout


def test_version_and_completion() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("boxrun ")
    completion = runner.invoke(app, ["--show-completion", "bash"], env={"SHELL": "/bin/bash"}, prog_name="boxrun")
    assert completion.exit_code == 0 and "_BOXRUN_COMPLETE" in completion.stdout.upper(), completion.stdout
