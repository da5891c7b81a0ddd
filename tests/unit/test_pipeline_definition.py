"""Pipeline definitions: parsing (JSON and YAML), every 422, matrix expansion, ordering."""

import functools
import json
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boxrun.errors import InvalidInput
from boxrun.pipelines.definition import media_kind, parse_definition
from boxrun.pipelines.model import MAX_MATRIX_COMBINATIONS, MAX_STEPS, RetryOn, When
from boxrun.pipelines.spec import definition_json_schema
from boxrun.pipelines.yamlload import MAX_ALIAS_NODES

YAML = "application/yaml"
JSON = "application/json"

# The issue's example, verbatim but for one line: its `report` step names no box or box group,
# which no job may omit (JobCreate: "give exactly one of 'box' or 'box_group'").
ISSUE_EXAMPLE = """\
name: flash-and-test              # optional
timeout_s: 7200                   # the whole pipeline; default 86400
env: {BOARD: f4}                  # shared by every step
steps:
  build:
    box_group: builders
    requires: [gcc]
    script: |
      ...
  flash:
    needs: [build]
    box_group: benches
    requires: [stm32]
    inputs: [{from: build, path: fw.bin}]
    retry: {max_attempts: 3, initial_interval_s: 5, backoff_coefficient: 2.0,
            max_interval_s: 60, on: [failed, timed_out, heartbeat_lost], exit_codes: [75]}
    script: ...
  test:
    needs: [flash]
    box_group: benches
    matrix: {voltage: ["3.0", "3.3"]}
    env: {VOLTAGE: "${{ matrix.voltage }}"}
    script: ...
  report:
    needs: [test]
    when: always                  # on_success (default) | on_failure | always
    allow_failure: true
    box_group: builders           # (added: the issue's example has no target for this step)
    script: ...
"""


def parse_yaml(text: str):
    return parse_definition(textwrap.dedent(text).encode(), YAML)


def parse_json(doc) -> object:
    return parse_definition(json.dumps(doc).encode(), JSON)


def step(**kw):
    return {"box": "b1", "script": "echo", **kw}


def refused(raw: bytes | str | dict, content_type: str | None = None) -> InvalidInput:
    """The InvalidInput a definition is refused with (a dict is sent as JSON, a str as YAML)."""
    if isinstance(raw, dict):
        raw, content_type = json.dumps(raw).encode(), content_type or JSON
    elif isinstance(raw, str):
        raw, content_type = textwrap.dedent(raw).encode(), content_type or YAML
    with pytest.raises(InvalidInput) as exc:
        parse_definition(raw, content_type or JSON)
    assert exc.value.reason.startswith(f"{exc.value.field}: "), exc.value.reason
    return exc.value


def names(pipeline) -> list[str]:
    return [s.name for s in pipeline.steps]


# ---------------------------------------------------------------- what parses


def test_the_issues_example_parses():
    p = parse_definition(ISSUE_EXAMPLE.encode(), YAML)
    assert p.name == "flash-and-test" and p.timeout_s == 7200
    assert names(p) == ["build", "flash", "test[voltage=3.0]", "test[voltage=3.3]", "report"]
    by = {s.name: s for s in p.steps}
    assert by["build"].job.box_group == "builders" and by["build"].job.requires == ["gcc"]
    assert by["build"].job.script == "...\n" and by["build"].job.env == {"BOARD": "f4"}
    flash = by["flash"]
    assert flash.needs == ["build"]
    assert [(i.from_step, i.path, i.dest) for i in flash.inputs] == [("build", "fw.bin", "fw.bin")]
    assert flash.retry is not None
    assert flash.retry.max_attempts == 3 and flash.retry.initial_interval_s == 5.0
    assert flash.retry.backoff_coefficient == 2.0 and flash.retry.max_interval_s == 60.0
    assert flash.retry.on == [RetryOn.FAILED, RetryOn.TIMED_OUT, RetryOn.HEARTBEAT_LOST]  # `on` is not True
    assert flash.retry.exit_codes == [75]
    assert by["test[voltage=3.3]"].job.env == {"BOARD": "f4", "VOLTAGE": "3.3"}
    assert by["test[voltage=3.0]"].needs == ["flash"] and by["test[voltage=3.0]"].retry is None
    report = by["report"]
    assert report.needs == ["test[voltage=3.0]", "test[voltage=3.3]"]
    assert report.when == When.ALWAYS and report.allow_failure is True


def test_the_issues_example_as_written_names_the_missing_target():
    as_written = ISSUE_EXAMPLE.replace("    box_group: builders           # (added", "    # (added")
    err = refused(as_written.encode(), YAML)
    assert err.field == "steps.report" and "exactly one of 'box' or 'box_group'" in err.reason


def test_yaml_and_json_give_the_same_pipeline():
    import yaml

    doc = yaml.safe_load(ISSUE_EXAMPLE)
    doc["steps"]["flash"]["retry"]["on"] = doc["steps"]["flash"]["retry"].pop(True)  # YAML 1.1's `on`
    assert parse_json(doc) == parse_definition(ISSUE_EXAMPLE.encode(), YAML)


def test_defaults():
    p = parse_json({"steps": {"only": step()}})
    assert p.name is None and p.timeout_s == 86400
    (s,) = p.steps
    assert s.needs == [] and s.inputs == [] and s.retry is None
    assert s.when == When.ON_SUCCESS and s.allow_failure is False
    assert s.job.timeout_s == 3600 and s.job.env == {}


def test_a_step_takes_every_job_field():
    body = step(
        requires=["b", "a"],
        files={"cfg/x.txt": "hello", "big.bin": {"sha256": "a" * 64, "size": 3}},
        env={"A": "1"},
        timeout_s=60,
        lock=True,
        priority=5,
        cancel_grace_s=3,
        queue_timeout_s=120,
    )
    (s,) = parse_json({"steps": {"all": body}}).steps
    j = s.job
    assert (j.box, j.requires, j.timeout_s, j.lock, j.priority, j.cancel_grace_s, j.queue_timeout_s) == (
        "b1",
        ["a", "b"],
        60,
        True,
        5,
        3,
        120,
    )
    assert j.inline_files() == {"cfg/x.txt": "hello"} and j.file_references()["big.bin"].size == 3


def test_pipeline_env_is_merged_under_the_steps_own():
    p = parse_json({"env": {"A": "pipe", "B": "pipe"}, "steps": {"s": step(env={"B": "step", "C": "step"})}})
    assert p.steps[0].job.env == {"A": "pipe", "B": "step", "C": "step"}


def test_pipeline_labels_are_merged_under_the_steps_own_and_matrix_values_substituted():
    p = parse_json(
        {
            "labels": {"suite": "nightly", "team": "hw"},
            "steps": {
                "flash": step(labels={"team": "fw"}),
                "test": step(matrix={"board": ["a", "b"]}, labels={"board": "${{ matrix.board }}"}),
            },
        }
    )
    assert {s.name: s.job.labels for s in p.steps} == {
        "flash": {"suite": "nightly", "team": "fw"},
        "test[board=a]": {"board": "a", "suite": "nightly", "team": "hw"},
        "test[board=b]": {"board": "b", "suite": "nightly", "team": "hw"},
    }
    assert parse_json({"steps": {"s": step()}}).steps[0].job.labels == {}


def test_bad_pipeline_labels_are_refused_naming_the_label():
    assert refused({"labels": {"Bad Key": "x"}, "steps": {"s": step()}}).field == "labels"
    assert refused({"labels": {"k": "v" * 201}, "steps": {"s": step()}}).field == "labels.k"
    assert refused({"labels": {"k": "${{ matrix.v }}"}, "steps": {"m": step(matrix={"v": ["1"]})}}).field == "labels.k"
    too_many = {f"k{i}": "v" for i in range(33)}
    assert refused({"labels": too_many, "steps": {"s": step()}}).field == "labels"
    # merged with the step's own, the total is checked as a job's: 20 + 20 distinct keys > 32
    merged = {
        "labels": {f"p{i}": "v" for i in range(20)},
        "steps": {"s": step(labels={f"s{i}": "v" for i in range(20)})},
    }
    assert refused(merged).field == "steps.s.labels"


def test_content_types():
    assert media_kind("application/json; charset=utf-8") == "json"
    assert media_kind("application/vnd.boxrun+json") == "json"
    for yaml_type in ("application/yaml", "application/x-yaml", "text/yaml", "Text/YAML; charset=utf-8"):
        assert media_kind(yaml_type) == "yaml"
    assert media_kind("text/plain") is None and media_kind(None) is None
    err = refused(b"{}", "text/plain")
    assert err.field == "content-type"


def test_a_utf8_bom_is_allowed():
    assert names(parse_definition(b"\xef\xbb\xbf" + json.dumps({"steps": {"a": step()}}).encode(), JSON)) == ["a"]


# ---------------------------------------------------------------- order


def test_steps_come_in_a_stable_topological_order():
    # defined in an order that is not topological; each time, of the steps whose needs are all
    # placed, the one defined first goes next (so `docs`, ready from the start, comes last)
    p = parse_json(
        {
            "steps": {
                "deploy": step(needs=["test", "lint"]),
                "test": step(needs=["build"]),
                "lint": step(),
                "build": step(),
                "docs": step(),
            }
        }
    )
    assert names(p) == ["lint", "build", "test", "deploy", "docs"]


def test_diamond_order_and_needs():
    p = parse_yaml(
        """
        steps:
          d: {box: b, script: x, needs: [b, c]}
          c: {box: b, script: x, needs: [a]}
          b: {box: b, script: x, needs: [a]}
          a: {box: b, script: x}
        """
    )
    assert names(p) == ["a", "c", "b", "d"]
    assert p.steps[-1].needs == ["b", "c"]


def test_duplicate_needs_collapse():
    p = parse_json({"steps": {"a": step(), "b": step(needs=["a", "a"])}})
    assert p.steps[1].needs == ["a"]


# ---------------------------------------------------------------- matrix


def test_matrix_expands_in_axis_order_and_substitutes_every_string():
    p = parse_yaml(
        """
        steps:
          build:
            matrix: {arch: [arm, x86], opt: [0, 2], debug: [true]}
            box_group: "builders-${{ matrix.arch }}"
            requires: ["cc-${{matrix.arch}}"]
            env: {OPT: "${{ matrix.opt }}", DEBUG: "${{ matrix.debug }}"}
            files: {"cfg-${{ matrix.arch }}.txt": "arch=${{ matrix.arch }}"}
            script: make ARCH=${{ matrix.arch }} -O${{ matrix.opt }}
        """
    )
    assert names(p) == [
        "build[arch=arm,opt=0,debug=true]",
        "build[arch=arm,opt=2,debug=true]",
        "build[arch=x86,opt=0,debug=true]",
        "build[arch=x86,opt=2,debug=true]",
    ]
    last = p.steps[-1].job
    assert last.box_group == "builders-x86" and last.requires == ["cc-x86"]
    assert last.env == {"OPT": "2", "DEBUG": "true"}
    assert last.files == {"cfg-x86.txt": "arch=x86"}
    assert last.script == "make ARCH=x86 -O2"


def test_needs_on_a_matrix_step_waits_for_all_of_it_and_a_concrete_name_for_one():
    p = parse_json(
        {
            "steps": {
                "test": step(matrix={"v": ["1", "2", "3"]}),
                "all": step(needs=["test"]),
                "one": step(needs=["test[v=2]"]),
            }
        }
    )
    by = {s.name: s for s in p.steps}
    assert by["all"].needs == ["test[v=1]", "test[v=2]", "test[v=3]"]
    assert by["one"].needs == ["test[v=2]"]


def test_matrix_to_matrix_pairs_through_substitution():
    p = parse_json(
        {
            "steps": {
                "build": step(matrix={"arch": ["arm", "x86"]}),
                "test": step(
                    matrix={"arch": ["arm", "x86"]},
                    needs=["build[arch=${{ matrix.arch }}]"],
                    inputs=[{"from": "build[arch=${{ matrix.arch }}]", "path": "out/fw.bin", "dest": "fw.bin"}],
                ),
            }
        }
    )
    by = {s.name: s for s in p.steps}
    assert by["test[arch=x86]"].needs == ["build[arch=x86]"]
    assert [(i.from_step, i.path, i.dest) for i in by["test[arch=x86]"].inputs] == [
        ("build[arch=x86]", "out/fw.bin", "fw.bin")
    ]


def test_other_expressions_are_left_as_written():
    (s,) = parse_json({"steps": {"a": step(script="echo '${{ secrets.TOKEN }}' ${{ env.X }}")}}).steps
    assert s.job.script == "echo '${{ secrets.TOKEN }}' ${{ env.X }}"


def test_matrix_limits_at_the_boundary():
    axis = [str(i) for i in range(16)]
    p = parse_json({"steps": {"m": step(matrix={"a": axis, "b": axis})}})  # 16 x 16 = 256
    assert len(p.steps) == MAX_MATRIX_COMBINATIONS
    err = refused({"steps": {"m": step(matrix={"a": axis, "b": axis, "c": ["x", "y"]})}})
    assert err.field == "steps.m.matrix" and "16 x 16 x 2 = 512 combinations" in err.reason
    assert "256" in err.reason


def test_step_limit_counts_expanded_steps():
    axis = [str(i) for i in range(250)]
    ok = parse_json({"steps": {"a": step(matrix={"i": axis}), "b": step(matrix={"i": axis})}})
    assert len(ok.steps) == MAX_STEPS
    err = refused({"steps": {"a": step(matrix={"i": axis}), "b": step(matrix={"i": axis}), "c": step()}})
    assert err.field == "steps" and "501 steps, over the limit of 500" in err.reason


def test_step_limit_without_matrix():
    err = refused({"steps": {f"s{i}": step() for i in range(MAX_STEPS + 1)}})
    assert err.field == "steps" and "501" in err.reason


@pytest.mark.parametrize(
    "matrix, field, words",
    [
        ({}, "steps.m.matrix", "at least one axis"),
        (["a"], "steps.m.matrix", "mapping of axis name"),
        ({"v": []}, "steps.m.matrix.v", "non-empty list"),
        ({"v": "3.3"}, "steps.m.matrix.v", "non-empty list"),
        ({"v": [3.3]}, "steps.m.matrix.v.0", 'write a decimal such as 3.3 as "3.3"'),
        ({"v": [None]}, "steps.m.matrix.v.0", "a string, an integer or a boolean"),
        ({"v": [{"a": 1}]}, "steps.m.matrix.v.0", "a string, an integer or a boolean"),
        ({"v": ["a b"]}, "steps.m.matrix.v.0", "matches"),
        ({"v": ["a,b"]}, "steps.m.matrix.v.0", "matches"),
        ({"v": ["x" * 65]}, "steps.m.matrix.v.0", "matches"),
        ({"v": [1, "1"]}, "steps.m.matrix.v", "listed twice"),
        ({"1v": ["a"]}, "steps.m.matrix.1v", "axis name"),
        ({f"a{i}": ["x"] for i in range(9)}, "steps.m.matrix", "9 axes"),
    ],
)
def test_bad_matrices(matrix, field, words):
    err = refused({"steps": {"m": step(matrix=matrix)}})
    assert err.field == field and words in err.reason, err.reason


@pytest.mark.parametrize(
    "body, field, words",
    [
        (step(script="${{ matrix.v }}"), "steps.m.script", "this step has no matrix"),
        (step(matrix={"v": ["1"]}, script="${{ matrix.w }}"), "steps.m.script", "names no axis"),
        (step(matrix={"volt": ["1"]}, env={"V": "${{ matrix.vlot }}"}), "steps.m.env.V", "did you mean 'volt'"),
        (step(matrix={"v": ["1"]}, script="${{ matrix }}"), "steps.m.script", "write ${{ matrix.AXIS }}"),
        (step(matrix={"v": ["1"]}, script="${{ matrix.v.x }}"), "steps.m.script", "write ${{ matrix.AXIS }}"),
        (step(matrix={"v": ["1"]}, needs=["${{ matrix.x }}"]), "steps.m.needs.0", "names no axis"),
    ],
)
def test_unknown_matrix_references(body, field, words):
    err = refused({"steps": {"m": body}})
    assert err.field == field and words in err.reason, err.reason


def test_matrix_in_the_pipeline_env_is_refused():
    err = refused({"env": {"V": "${{ matrix.v }}"}, "steps": {"m": step(matrix={"v": ["1"]})}})
    assert err.field == "env.V"


def test_substitution_that_merges_two_keys_is_refused():
    err = refused({"steps": {"m": step(matrix={"v": ["1"]}, files={"f${{ matrix.v }}": "a", "f1": "b"})}})
    assert err.field == "steps.m.files" and "two paths become 'f1'" in err.reason


def test_a_job_error_in_a_matrix_step_names_the_combination():
    err = refused({"steps": {"m": {"box": "${{ matrix.n }}", "script": "x", "matrix": {"n": ["ok", "_x"]}}}})
    assert err.field == "steps.m.box" and "(in m[n=_x])" in err.reason


def test_an_overlong_expanded_name_is_refused():
    axes = {f"axis{i}": ["v" * 40] for i in range(5)}
    err = refused({"steps": {"m": step(matrix=axes)}})
    assert err.field == "steps.m.matrix" and "longer than 200" in err.reason


def test_matrix_repeating_a_large_script_is_bounded():
    script = "x" * 200_000
    err = refused({"steps": {"m": step(script=script, matrix={"i": list(range(100))})}})
    assert err.field == "steps" and "more than 16777216 bytes of script, env and inline files" in err.reason


# ---------------------------------------------------------------- the graph


def test_a_cycle_is_named():
    err = refused({"steps": {"a": step(needs=["c"]), "b": step(needs=["a"]), "c": step(needs=["b"])}})
    assert err.field == "steps.a.needs" and "cycle: a -> c -> b -> a" in err.reason


def test_a_cycle_behind_a_ready_step_is_named_without_the_bystanders():
    err = refused(
        {"steps": {"root": step(), "x": step(needs=["y", "root"]), "y": step(needs=["x"]), "z": step(needs=["x"])}}
    )
    assert "cycle: x -> y -> x" in err.reason


def test_a_step_needing_itself_is_a_cycle():
    err = refused({"steps": {"a": step(needs=["a"])}})
    assert err.field == "steps.a.needs" and "cycle: a -> a" in err.reason


def test_a_cycle_through_a_matrix_step():
    err = refused({"steps": {"t": step(matrix={"v": ["1", "2"]}, needs=["r"]), "r": step(needs=["t[v=2]"])}})
    assert err.field == "steps.r.needs" and "cycle: r -> t[v=2] -> r" in err.reason


def test_unknown_needs_are_named_with_a_suggestion():
    err = refused({"steps": {"build": step(), "flash": step(needs=["biuld"])}})
    assert err.field == "steps.flash.needs.0"
    assert "unknown step 'biuld'" in err.reason and "did you mean 'build'" in err.reason


def test_unknown_concrete_need():
    err = refused({"steps": {"t": step(matrix={"v": ["1"]}), "r": step(needs=["t[v=9]"])}})
    assert err.field == "steps.r.needs.0" and "unknown step 't[v=9]'" in err.reason


def test_inputs_from_an_ancestor_through_needs():
    p = parse_json(
        {
            "steps": {
                "a": step(),
                "b": step(needs=["a"]),
                "c": step(needs=["b"], inputs=[{"from": "a", "path": "x/out.bin"}]),
            }
        }
    )
    assert p.steps[-1].inputs[0].from_step == "a" and p.steps[-1].inputs[0].dest == "x/out.bin"


@pytest.mark.parametrize(
    "steps, field, words",
    [
        (
            {"a": step(), "b": step(inputs=[{"from": "a", "path": "f"}])},
            "steps.b.inputs.0.from",
            "'a' is not an ancestor of 'b'",
        ),
        (
            {"a": step(inputs=[{"from": "b", "path": "f"}]), "b": step(needs=["a"])},
            "steps.a.inputs.0.from",
            "not an ancestor",
        ),
        ({"a": step(inputs=[{"from": "a", "path": "f"}])}, "steps.a.inputs.0.from", "its own artifacts"),
        ({"a": step(inputs=[{"from": "nope", "path": "f"}])}, "steps.a.inputs.0.from", "unknown step 'nope'"),
        (
            {"t": step(matrix={"v": ["1", "2"]}), "r": step(needs=["t"], inputs=[{"from": "t", "path": "f"}])},
            "steps.r.inputs.0.from",
            "is a matrix step: name one of its steps, e.g. 't[v=1]'",
        ),
        (
            {
                "a": step(),
                "b": step(needs=["a"], inputs=[{"from": "a", "path": "f"}, {"from": "a", "path": "g", "dest": "f"}]),
            },
            "steps.b.inputs.1.dest",
            "already a file or another input",
        ),
        (
            {"a": step(), "b": step(needs=["a"], files={"f": "x"}, inputs=[{"from": "a", "path": "f"}])},
            "steps.b.inputs.0.dest",
            "already a file",
        ),
        ({"a": step(), "b": step(needs=["a"], inputs=[{"from": "a", "path": "../f"}])}, "steps.b.inputs.0.path", ""),
        ({"a": step(), "b": step(needs=["a"], inputs=[{"from": "a"}])}, "steps.b.inputs.0.path", "Field required"),
        (
            {"a": step(), "b": step(needs=["a"], inputs=[{"from": "a", "path": "f", "to": "g"}])},
            "steps.b.inputs.0.to",
            "unknown key",
        ),
    ],
)
def test_bad_inputs(steps, field, words):
    err = refused({"steps": steps})
    assert err.field == field and words in err.reason, err.reason


def test_on_failure_without_needs_would_never_run():
    err = refused({"steps": {"a": step(when="on_failure")}})
    assert err.field == "steps.a.when"


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize("name", ["Build", "-a", "_a", "a.b", "a b", "a[x=1]", "x" * 64, "", "é"])
def test_bad_step_names(name):
    err = refused({"steps": {name: step()}})
    assert err.field.startswith("steps") and "a step name matches" in err.reason


def test_good_step_names():
    p = parse_json({"steps": {"0": step(), "a-b_c": step(), "x" * 63: step()}})
    assert names(p) == ["0", "a-b_c", "x" * 63]


@pytest.mark.parametrize(
    "doc, field, words",
    [
        ({"steps": {"a": step(timeout_s=0)}}, "steps.a.timeout_s", "greater than or equal to 1"),
        ({"steps": {"a": step(timeout_s="60")}}, "steps.a.timeout_s", "valid integer"),
        ({"steps": {"a": step(lock=1)}}, "steps.a.lock", "valid boolean"),
        ({"steps": {"a": step(env={"A": 1})}}, "steps.a.env.A", "valid string"),
        ({"steps": {"a": step(env={"BOXRUN_X": "1"})}}, "steps.a.env", "reserved"),
        ({"steps": {"a": {"script": "x"}}}, "steps.a", "exactly one of 'box' or 'box_group'"),
        ({"steps": {"a": step(box_group="g")}}, "steps.a", "exactly one of 'box' or 'box_group'"),
        ({"steps": {"a": step(script="")}}, "steps.a.script", "at least 1 character"),
        ({"steps": {"a": step(files={"../x": "y"})}}, "steps.a.files.../x.[key]", "stay inside the workspace"),
        ({"steps": {"a": step(needs="b")}}, "steps.a.needs", "valid array"),
        ({"steps": {"a": step(when="sometimes")}}, "steps.a.when", "'on_success', 'on_failure' or 'always'"),
        ({"steps": {"a": step(allow_failure="yes")}}, "steps.a.allow_failure", "valid boolean"),
        ({"steps": {"a": step(retry={"max_attempts": 0})}}, "steps.a.retry.max_attempts", "greater than"),
        ({"steps": {"a": step(retry={"on": ["crashed"]})}}, "steps.a.retry.on.0", "'failed'"),
        ({"steps": {"a": step(retry={"on": []})}}, "steps.a.retry.on", "at least 1 item"),
        ({"steps": {"a": step(retry={"exit_codes": [300]})}}, "steps.a.retry.exit_codes.0", "less than"),
        (
            {"steps": {"a": step(retry={"initial_interval_s": 10, "max_interval_s": 5})}},
            "steps.a.retry",
            "max_interval_s must be at least",
        ),
        ({"steps": {"a": step(retry={"tries": 3})}}, "steps.a.retry.tries", "unknown key"),
        ({"steps": {"a": step(retry=3)}}, "steps.a.retry", ""),
        ({"steps": {"a": step(scirpt="x")}}, "steps.a.scirpt", "did you mean 'script'"),
        ({"steps": {"a": step(idempotency_key="k")}}, "steps.a.idempotency_key", "unknown key"),
        ({"steps": {"a": "echo"}}, "steps.a", "a step is a mapping of its fields, not a string"),
        ({"steps": {}}, "steps", "at least one step"),
        ({"steps": [step()]}, "steps", "a mapping of step name"),
        ({}, "steps", "at least one step"),
        ({"steps": {"a": step()}, "stpes": {}}, "stpes", "did you mean 'steps'"),
        ({"steps": {"a": step()}, "timeout_s": 0}, "timeout_s", "greater than or equal to 1"),
        ({"steps": {"a": step()}, "timeout_s": 86400 * 31}, "timeout_s", "less than or equal to"),
        ({"steps": {"a": step()}, "timeout_s": 1.5}, "timeout_s", "valid integer"),
        ({"steps": {"a": step()}, "name": ""}, "name", "at least 1 character"),
        ({"steps": {"a": step()}, "name": 5}, "name", "valid string"),
        ({"steps": {"a": step()}, "env": {"1A": "x"}}, "env", "not a valid variable name"),
        ({"steps": {"a": step()}, "env": {"BOXRUN_A": "x"}}, "env", "reserved"),
        ({"steps": {"a": step()}, "env": ["A=1"]}, "env", "Input should be an object"),
    ],
)
def test_bad_fields_are_named(doc, field, words):
    err = refused(doc)
    assert err.field == field and words in err.reason, err.reason


@pytest.mark.parametrize("doc", [[], "steps", 5, None, True])
def test_a_definition_is_a_mapping(doc):
    err = refused(json.dumps(doc).encode(), JSON)
    assert err.field == "body" and "a pipeline definition is a mapping" in err.reason


def test_a_huge_value_is_not_echoed():
    huge = "x" * 100_000
    for doc in (
        {"steps": {huge: step()}},
        {"steps": {"a": step(needs=[huge[:299]])}},
        {"steps": {"a": step()}, huge: 1},
        {"steps": {"a": step(matrix={"v": [huge]})}},
        {"steps": {"a": step(env={"1" + huge: "x"})}},
        {"steps": {"a": step(box=huge)}},
        {"steps": {"a": step(files={"/" + huge: "x"})}},
    ):
        err = refused(doc)
        assert len(err.reason) < 600 and len(err.field or "") < 200, (err.field, err.reason[:200])


# ---------------------------------------------------------------- the document


def test_invalid_yaml_names_line_and_column():
    err = refused("steps:\n  a: {box: b, script: x\n  b: 1\n")
    assert err.field == "body" and "invalid YAML" in err.reason and "line 3, column" in err.reason


def test_invalid_json_names_line_and_column():
    err = refused(b'{"steps": {\n  "a": {"box": "b",, "script": "x"}}}', JSON)
    assert err.field == "body" and "invalid JSON" in err.reason and "(line 2, column 20)" in err.reason


def test_yaml_that_is_not_a_mapping():
    assert "not a list" in refused("- a\n- b\n").reason
    assert "not a string" in refused("just text\n").reason
    assert "empty" in refused("# nothing\n").reason


def test_duplicate_step_names_in_yaml_are_refused_not_last_wins():
    err = refused(
        """\
        steps:
          build: {box: b, script: one}
          test: {box: b, script: t}
          build: {box: b, script: two}
        """
    )
    assert err.field == "body" and "duplicate key 'build' (already at line 2)" in err.reason
    assert "line 4, column 3" in err.reason


def test_duplicate_step_names_in_json_are_refused_not_last_wins():
    raw = b'{"steps": {"build": {"box": "b", "script": "1"}, "build": {"box": "b", "script": "2"}}}'
    err = refused(raw, JSON)
    assert err.field == "steps" and "duplicate key 'build'" in err.reason


def test_duplicate_keys_anywhere_are_refused():
    assert "duplicate key 'script'" in refused("steps:\n  a: {box: b, script: x, script: y}\n").reason
    raw = b'{"steps": {"a": {"box": "b", "script": "x", "env": {"A": "1", "A": "2"}}}}'
    assert refused(raw, JSON).field == "steps.a.env"


def test_yaml_1_1_surprises_do_not_happen():
    p = parse_yaml(
        """
        steps:
          a:
            box: b
            script: x
            env: {ANSWER: "yes", V: "010"}
            matrix: {flag: [yes, no, on, off], n: [010], d: [2026-01-01]}
        """
    )
    assert names(p)[:2] == ["a[flag=yes,n=10,d=2026-01-01]", "a[flag=no,n=10,d=2026-01-01]"]
    assert names(p)[2] == "a[flag=on,n=10,d=2026-01-01]"


def test_yaml_unsafe_and_foreign_tags_are_refused():
    for text in (
        "steps: !!python/object/apply:os.system [echo pwned]\n",
        "steps: {a: {box: b, script: !!binary aGk=}}\n",
        "steps: {a: {box: b, script: !!timestamp 2026-01-01}}\n",
        "steps: {a: {box: b, script: !custom x}}\n",
        "steps: !!set {a, b}\n",
    ):
        err = refused(text)
        assert err.field == "body" and "constructor" in err.reason and "line 1" in err.reason


def test_yaml_keys_must_be_strings():
    err = refused("steps:\n  1: {box: b, script: x}\n")
    assert "a key must be a string" in err.reason and "line 2, column 3" in err.reason


def test_yaml_anchors_aliases_and_merge_keys_work():
    p = parse_yaml(
        """
        steps:
          a: {box: b, script: one, env: &env {A: "1"}}
          b: {box: b, script: two, env: *env, needs: [a]}
        """
    )
    assert p.steps[1].job.env == {"A": "1"}
    assert names(p) == ["a", "b"]
    p = parse_yaml(
        """
        steps:
          a: &base {box_group: benches, timeout_s: 60, script: one}
          b: {<<: *base, script: two, timeout_s: 5, needs: [a]}
        """
    )
    b = p.steps[1].job
    assert (b.box_group, b.script, b.timeout_s) == ("benches", "two", 5)


def test_billion_laughs_is_refused_fast():
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("steps: {s: {box: b, script: x, env: {A: *a9}}}")
    started = time.monotonic()
    err = refused("\n".join(lines) + "\n")
    assert time.monotonic() - started < 1.0
    assert err.field == "body" and "anchors and aliases expand the document" in err.reason
    assert f"over the limit of {MAX_ALIAS_NODES}" in err.reason


def test_merge_key_bomb_is_refused_fast():
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: 1" for j in range(10)) + "}"]
    for i in range(1, 12):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * 10) + "]}")
    started = time.monotonic()
    err = refused("\n".join(lines) + "\n")
    assert time.monotonic() - started < 1.0
    assert "anchors and aliases expand the document" in err.reason or "nests more than" in err.reason


def test_a_recursive_alias_is_refused():
    err = refused("steps: &s {a: *s}\n")
    assert "recursive alias" in err.reason


def test_deep_nesting_is_refused():
    assert "nests more than" in refused("steps: " + "[" * 500 + "]" * 500 + "\n").reason
    assert "nests more than" in refused(b'{"steps": ' + b"[" * 5000 + b"]" * 5000 + b"}", JSON).reason
    err = refused(b'{"steps": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON)
    assert err.field == "body"


def test_not_utf8():
    err = refused(b'{"steps": "\xff"}', JSON)
    assert err.field == "body" and "not UTF-8" in err.reason


@pytest.mark.parametrize(
    "raw", [b'{"steps": NaN}', b'{"timeout_s": Infinity, "steps": {}}', b'{"timeout_s": ' + b"9" * 5000 + b"}"]
)
def test_json_non_numbers_and_huge_numbers(raw):
    assert refused(raw, JSON).field == "body"


def test_yaml_non_finite_and_huge_numbers():
    assert "not a finite number" in refused("timeout_s: 1.0e999\nsteps: {}\n").reason
    assert "not a decimal integer" in refused("timeout_s: " + "9" * 5000 + "\nsteps: {}\n").reason
    # .inf is a string in the core schema: a type error at the field, not a float
    assert refused("timeout_s: .inf\nsteps: {a: {box: b, script: x}}\n").field == "timeout_s"


def test_nul_and_lone_surrogates_are_refused_anywhere():
    err = refused(b'{"steps": {"a": {"box": "b", "script": "x", "env": {"A": "\\u0000"}}}}', JSON)
    assert err.field == "steps.a.env.A" and "NUL" in err.reason
    err = refused(b'{"steps": {"a\\ud800": {"box": "b", "script": "x"}}}', JSON)
    assert err.field == "steps" and "surrogate" in err.reason


def test_yaml_multiple_documents_are_refused():
    err = refused("steps: {a: {box: b, script: x}}\n---\nsteps: {}\n")
    assert "single document" in err.reason and "line 2" in err.reason


def test_ancestry_through_a_long_chain():
    steps = {f"s{i}": step(needs=[f"s{i - 1}"] if i else []) for i in range(MAX_STEPS)}
    steps[f"s{MAX_STEPS - 1}"]["inputs"] = [{"from": "s0", "path": "first.bin"}]
    p = parse_json({"steps": steps})
    assert names(p) == list(steps) and p.steps[-1].inputs[0].from_step == "s0"
    steps["s0"]["inputs"] = [{"from": f"s{MAX_STEPS - 1}", "path": "last.bin"}]
    assert "not an ancestor" in refused({"steps": steps}).reason


def test_yaml_control_characters_are_refused():
    err = refused(b'steps: {a: {box: b, script: "x\x07"}}\n', YAML)
    assert err.field == "body" and "invalid YAML" in err.reason


def test_yaml_escapes_cannot_smuggle_a_nul():
    err = refused('steps: {a: {box: b, script: "x\\0y"}}\n')
    assert err.field == "steps.a.script" and "NUL" in err.reason


@pytest.mark.parametrize(
    "doc, field",
    [
        ({"steps": {"build\n": step()}}, "steps.build\n"),
        ({"steps": {"m": step(matrix={"v\n": ["1"]})}}, "steps.m.matrix.v\n"),
        ({"steps": {"m": step(matrix={"v": ["1\n"]})}}, "steps.m.matrix.v.0"),
    ],
)
def test_a_trailing_newline_does_not_slip_through_a_pattern(doc, field):
    assert refused(doc).field == field


# ---------------------------------------------------------------- any input: a pipeline or a 422

_REFS = ["a", "b", "t", "t[v=1]", "t[v=${{ matrix.v }}]", "${{ matrix.v }}", "nope"]
_KEYS = st.sampled_from(["name", "timeout_s", "env", "steps", "box", "script", "needs", "inputs", "retry", "when"])
_KEYS = st.one_of(_KEYS, st.sampled_from(["matrix", "from", "path", "on", "exit_codes", "A", "x/y", *_REFS]))
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 100_000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from([*_REFS, "always", "failed", "x/y"]),
)
_ANY = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=30,
)
_STEP = st.fixed_dictionaries(
    {"box": st.just("b"), "script": st.just("x")},
    optional={
        "needs": st.lists(st.sampled_from(_REFS), max_size=3),
        "matrix": st.dictionaries(
            st.sampled_from(["v", "w"]),
            st.lists(st.sampled_from(["1", "2", 3, True]), min_size=1, max_size=3, unique=True),
            min_size=1,
        ),
        "inputs": st.lists(
            st.fixed_dictionaries({"from": st.sampled_from(_REFS), "path": st.sampled_from(["f", "g/h"])}), max_size=2
        ),
        "when": st.sampled_from(["always", "on_failure", "on_success"]),
        "env": st.dictionaries(
            st.sampled_from(["A", "B"]), st.sampled_from(["x", "${{ matrix.v }}", "${{ matrix.w }}"])
        ),
    },
)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_ANY, st.booleans())
def test_any_document_is_a_pipeline_or_a_422(doc, as_yaml):
    import yaml

    raw, content_type = (yaml.safe_dump(doc).encode(), YAML) if as_yaml else (json.dumps(doc).encode(), JSON)
    try:
        parse_definition(raw, content_type)
    except InvalidInput as exc:
        assert exc.field and exc.reason.startswith(f"{exc.field}: ")


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(["a", "b", "t"]), _STEP, min_size=1))
def test_any_graph_is_ordered_or_a_422(steps):
    try:
        p = parse_json({"steps": steps})
    except InvalidInput:
        return
    placed: set[str] = set()
    for s in p.steps:  # needs and input sources always come first
        assert set(s.needs) <= placed and {i.from_step for i in s.inputs} <= placed
        placed.add(s.name)


@pytest.mark.parametrize(
    "body, field",
    [
        (step(matrix={"w": ["always"]}, when="${{ matrix.w }}"), "steps.m.when"),
        (step(matrix={"n": ["A"]}, env={"V_${{ matrix.n }}": "x"}), "steps.m.env"),
        (step(matrix={"n": ["1"]}, retry={"on": ["${{ matrix.n }}"]}), "steps.m.retry.on.0"),
    ],
)
def test_matrix_values_are_substituted_only_where_documented(body, field):
    assert refused({"steps": {"m": body}}).field == field


# ---------------------------------------------------------------- the JSON Schema


@functools.cache
def _schema_validator():
    """definition_json_schema() compiled by jsonschema_rs, whose Rust regexes take no surrogate
    ranges: `\\ud800-\\udfff` is cut from the patterns (the parser refuses surrogates anyway)."""
    import jsonschema_rs

    text = json.dumps(definition_json_schema()).replace("\\\\ud800-\\\\udfff", "")
    return jsonschema_rs.validator_for(json.loads(text))


def test_the_schema_takes_the_issues_example_and_substitutions():
    import yaml

    validator = _schema_validator()
    doc = yaml.safe_load(ISSUE_EXAMPLE)
    doc["steps"]["flash"]["retry"]["on"] = doc["steps"]["flash"]["retry"].pop(True)
    assert validator.is_valid(doc)
    substituted = step(
        box=None,
        box_group="builders-${{ matrix.arch }}",
        requires=["cc-${{ matrix.arch }}"],
        files={"${{ matrix.arch }}/cfg.txt": "x"},
        matrix={"arch": ["arm", "x86"]},
        inputs=[{"from": "a", "path": "${{ matrix.arch }}/fw.bin", "dest": None}],
        needs=["a"],
    )
    assert validator.is_valid({"steps": {"a": step(), "b": substituted}})
    parse_json({"steps": {"a": step(), "b": substituted}})


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"steps": {}},
        {"steps": {"Bad": step()}},
        {"steps": {"a": step()}, "stpes": {}},
        {"steps": {"a": step(scirpt="x")}},
        {"steps": {"a": step(idempotency_key="k")}},
        {"steps": {"a": step(when="sometimes")}},
        {"steps": {"a": step(box_group="g")}},
        {"steps": {"a": {"script": "x"}}},
        {"steps": {"a": step(matrix={"v": [3.5]})}},
        {"steps": {"a": step(matrix={"v": ["a b"]})}},
        {"steps": {"a": step(retry={"on": ["crashed"]})}},
        {"steps": {"a": step(env={"BOXRUN_X": "1"})}},
        {"steps": {"a": step()}, "timeout_s": 0},
    ],
)
def test_what_the_schema_refuses_the_parser_refuses(doc):
    assert not _schema_validator().is_valid(doc)
    refused(doc)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(_ANY, st.dictionaries(st.sampled_from(["a", "b", "t"]), _STEP, min_size=1).map(lambda s: {"steps": s}))
)
def test_what_the_parser_accepts_the_schema_accepts(doc):
    try:
        parse_json(doc)
    except InvalidInput:
        return
    assert _schema_validator().is_valid(doc)


# ---------------------------------------------------------------- placement across steps


def test_a_pinned_step_takes_its_ancestors_target_and_the_schema_takes_it():
    doc = {
        "steps": {
            "flash": step(box=None, box_group="benches", keep_box=True),
            "test": {"needs": ["flash"], "same_box_as": "flash", "script": "t"},
            "off": {"needs": ["test"], "same_box_as": "flash", "box_group": "benches", "script": "o"},
        }
    }
    assert _schema_validator().is_valid(doc)
    p = parse_json(doc)
    got = {s.name: (s.job.box, s.job.box_group, s.same_box_as, s.keep_box) for s in p.steps}
    assert got == {
        "flash": (None, "benches", None, True),
        "test": (None, "benches", "flash", False),
        "off": (None, "benches", "flash", False),
    }
    # a step without a target and without same_box_as is still refused by both
    bare = {"steps": {"a": {"script": "x"}}}
    assert not _schema_validator().is_valid(bare)
    refused(bare)


@pytest.mark.parametrize(
    ("steps", "field", "words"),
    [
        ({"a": step(), "b": step(same_box_as="a")}, "steps.b.same_box_as", "'a' is not an ancestor of 'b'"),
        ({"a": step(), "b": step(needs=["a"], same_box_as="b")}, "steps.b.same_box_as", "pinned to itself"),
        ({"a": step(), "b": step(needs=["a"], same_box_as="c")}, "steps.b.same_box_as", "unknown step 'c'"),
        ({"a": step(), "b": step(needs=["a"], box="b2", same_box_as="a")}, "steps.b.box", "(box 'b1')"),
        (
            {"a": step(matrix={"v": [1, 2]}), "b": step(needs=["a"], same_box_as="a")},
            "steps.b.same_box_as",
            "'a' is a matrix step",
        ),
        ({"a": step(keep_box=1)}, "steps.a.keep_box", "valid boolean"),
    ],
)
def test_same_box_as_is_refused_naming_the_field(steps, field, words):
    err = refused({"steps": steps})
    assert err.field == field and words in str(err)


def test_a_matrix_pins_each_combination_to_its_own_through_the_matrix_value():
    doc = {
        "steps": {
            "flash": step(matrix={"board": ["f4", "h7"]}, keep_box=True),
            "test": step(
                matrix={"board": ["f4", "h7"]}, needs=["flash"], same_box_as="flash[board=${{ matrix.board }}]"
            ),
        }
    }
    p = parse_json(doc)
    assert {s.name: s.same_box_as for s in p.steps if s.name.startswith("test")} == {
        "test[board=f4]": "flash[board=f4]",
        "test[board=h7]": "flash[board=h7]",
    }
