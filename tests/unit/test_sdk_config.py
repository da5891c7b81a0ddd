"""boxrun.sdk.config: where a client finds the API and its token (arguments, environment, the
saved profile, a running dev stack), and the profile file `save_profile` writes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from boxrun.client.credentials import dev_endpoints_path
from boxrun.errors import InvalidInput
from boxrun.sdk import load_profile, profile_path, resolve, save_profile

ENV = ("BOXRUN_URL", "BOXRUN_TOKEN", "BOXRUN_API_URL", "BOXRUN_API_TOKEN")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real profile, dev stack or BOXRUN_* variable of the machine leaks in."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def dev_stack(url: str, token: str) -> None:
    path = dev_endpoints_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"api_url": url, "token": token}))


def test_profile_lives_under_the_config_dir(isolated: Path) -> None:
    assert profile_path() == isolated / "config" / "boxrun" / "profile.json"
    assert dev_endpoints_path().is_relative_to(isolated / "data")


def test_save_profile_is_private_and_loads_back() -> None:
    path = save_profile("http://api.test:8000/", "tok-1")
    assert path == profile_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_profile() == ("http://api.test:8000", "tok-1")
    save_profile("http://api.test:8000", "tok-2")  # replaced, still private, no temporary left
    assert load_profile() == ("http://api.test:8000", "tok-2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]


def test_save_profile_refuses_a_url_without_scheme_and_an_empty_token() -> None:
    with pytest.raises(InvalidInput) as bad_url:
        save_profile("api.test:8000", "tok")
    assert bad_url.value.field == "url"
    with pytest.raises(InvalidInput) as no_token:
        save_profile("http://api.test", "")
    assert no_token.value.field == "token"
    assert not profile_path().exists()


def test_arguments_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXRUN_URL", "http://env.test")
    monkeypatch.setenv("BOXRUN_TOKEN", "env-tok")
    save_profile("http://profile.test", "profile-tok")
    got = resolve("http://arg.test/", "arg-tok")
    assert (got.url, got.token, got.url_from, got.token_from) == (
        "http://arg.test",
        "arg-tok",
        "arguments",
        "arguments",
    )


def test_environment_before_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    save_profile("http://profile.test", "profile-tok")
    monkeypatch.setenv("BOXRUN_URL", "http://env.test")
    monkeypatch.setenv("BOXRUN_TOKEN", "env-tok")
    got = resolve()
    assert (got.url, got.token) == ("http://env.test", "env-tok")


def test_older_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOXRUN_API_URL", "http://old.test")
    monkeypatch.setenv("BOXRUN_API_TOKEN", "old-tok")
    assert (resolve().url, resolve().token) == ("http://old.test", "old-tok")
    monkeypatch.setenv("BOXRUN_TOKEN", "new-tok")
    assert resolve().token == "new-tok"


def test_profile_before_dev_stack() -> None:
    dev_stack("http://127.0.0.1:8000", "dev-tok")
    assert (resolve().url, resolve().token) == ("http://127.0.0.1:8000", "dev-tok")
    save_profile("http://profile.test", "profile-tok")
    got = resolve()
    assert (got.url, got.token) == ("http://profile.test", "profile-tok")
    assert got.url_from.startswith("profile ")


def test_a_token_is_mixed_in_only_from_a_source_with_the_same_url(monkeypatch: pytest.MonkeyPatch) -> None:
    save_profile("http://profile.test", "profile-tok")
    # the URL from the environment, the token from the profile saved for that URL
    monkeypatch.setenv("BOXRUN_URL", "http://profile.test/")
    assert resolve().token == "profile-tok"
    # another server: the profile's token is not sent there
    monkeypatch.setenv("BOXRUN_URL", "http://elsewhere.test")
    with pytest.raises(InvalidInput) as refused:
        resolve()
    assert "token for http://elsewhere.test" in refused.value.reason
    assert refused.value.field == "token"
    # a token given with it is used
    assert resolve(token="t").url == "http://elsewhere.test"


def test_nothing_found_says_what_to_do() -> None:
    with pytest.raises(InvalidInput) as none:
        resolve()
    reason = none.value.reason
    assert "BOXRUN_URL" in reason and "boxrun login" in reason and "boxrun dev" in reason
    assert str(profile_path()) in reason


def test_a_broken_profile_is_named(isolated: Path) -> None:
    path = profile_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(InvalidInput) as broken:
        resolve()
    assert str(path) in broken.value.reason
