import pytest
from pydantic import ValidationError

from boxrun.constants import ALLOWED_FROM, TERMINAL_STATES, JobState
from boxrun.schemas import MAX_SPEC_BYTES, FrozenFileRef, JobCreate
from boxrun.workspace_paths import clean_relative_path


def make(**kw):
    base = {"box": "b1", "script": "print(1)"}
    base.update(kw)
    return JobCreate(**base)


def error_fields(exc: ValidationError) -> set[str]:
    """The top-level fields at fault (an error inside `env` is at env.NAME)."""
    return {str(e["loc"][0]) for e in exc.errors()}


def test_defaults():
    job = make()
    assert job.timeout_s == 3600 and job.lock is False and job.files == {} and job.env == {}


@pytest.mark.parametrize("raw, cleaned", [("a.txt", "a.txt"), ("./d/e.txt", "d/e.txt"), ("d//e", "d/e")])
def test_relative_paths_are_normalised(raw, cleaned):
    assert clean_relative_path(raw) == cleaned


@pytest.mark.parametrize("raw", ["", "/etc/passwd", "../x", "a/../../x", "a/..", ".", "a\\b", "a\x00b"])
def test_paths_outside_the_workspace_are_refused(raw):
    with pytest.raises(ValueError):
        clean_relative_path(raw)


def test_file_path_escape_names_the_field():
    with pytest.raises(ValidationError) as exc:
        make(files={"../../etc/x": "boom"})
    assert "files" in error_fields(exc.value)


def test_exactly_one_target():
    with pytest.raises(ValidationError, match="exactly one of 'box' or 'box_group'"):
        JobCreate(script="x")
    with pytest.raises(ValidationError, match="exactly one"):
        JobCreate(script="x", box="a", box_group="g")


@pytest.mark.parametrize("env", [{"1BAD": "x"}, {"A-B": "x"}, {"A\n": "x"}, {"BOXRUN_JOB_ID": "x"}, {"OK": "a\x00b"}])
def test_bad_env_is_refused(env):
    with pytest.raises(ValidationError) as exc:
        make(env=env)
    assert "env" in error_fields(exc.value)


def test_unknown_fields_and_bad_types_are_refused():
    with pytest.raises(ValidationError) as exc:
        make(timeout=5)
    assert "timeout" in error_fields(exc.value)
    with pytest.raises(ValidationError) as exc:
        make(timeout_s=0)
    assert "timeout_s" in error_fields(exc.value)
    with pytest.raises(ValidationError):
        make(script="")


def test_spec_size_is_bounded():
    with pytest.raises(ValidationError, match="script \\+ env is"):
        make(env={f"V{i}": "x" * 100_000 for i in range(MAX_SPEC_BYTES // 100_000 + 1)})
    # files have their own total (max_job_files_bytes, checked at submission), not this one
    files = {f"f{i}": "x" * 100_000 for i in range(MAX_SPEC_BYTES // 100_000 + 1)}
    assert make(files=files).files_bytes() == len(files) * 100_000


def test_files_are_inline_text_or_upload_references():
    ref = {"sha256": "ab" * 32, "size": 3}
    body = make(files={"cfg.txt": "text", "fw.bin": ref})
    assert body.inline_files() == {"cfg.txt": "text"}
    assert body.file_references()["fw.bin"].size == 3
    frozen = {"key": "uploads/default/" + "ab" * 32, **ref}
    spec = body.frozen_spec({"fw.bin": FrozenFileRef(**frozen)})
    assert spec["files"] == {"cfg.txt": "text"} and spec["file_refs"] == {"fw.bin": frozen}
    assert JobCreate.from_frozen(spec) == body.model_copy(update={"idempotency_key": None})
    for bad in ({"sha256": "AB" * 32, "size": 3}, {"sha256": "ab" * 32, "size": -1}, {"sha256": "ab" * 32}):
        with pytest.raises(ValidationError):
            make(files={"fw.bin": bad})


def test_requires_deduplicated_and_sorted():
    assert make(box=None, box_group="g", requires=["b", "a", "b"]).requires == ["a", "b"]


def test_frozen_spec_excludes_the_idempotency_key():
    spec = make(idempotency_key="k1").frozen_spec()
    assert "idempotency_key" not in spec and spec["script"] == "print(1)"


def test_state_machine_is_one_way_and_terminal_states_absorb():
    for target, sources in ALLOWED_FROM.items():
        assert target not in sources
        assert not (set(sources) & TERMINAL_STATES), f"{target} may be entered from a terminal state"
    assert {s for s in JobState if s.terminal} == TERMINAL_STATES
    assert JobState.QUEUED not in ALLOWED_FROM  # nothing ever returns to queued
