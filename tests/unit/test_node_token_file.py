"""Settings.resolved_node_token: the node token from a private file, else from the environment."""

from __future__ import annotations

import pytest

from boxrun.settings import Settings


def test_the_file_wins_over_the_value_and_is_stripped(tmp_path):
    path = tmp_path / "node-token"
    path.write_text("bxn_from_file\n")
    path.chmod(0o600)
    settings = Settings(node_token="bxn_from_env", node_token_file=path)
    assert settings.resolved_node_token() == "bxn_from_file"


def test_without_a_file_the_value_is_used(monkeypatch):
    monkeypatch.delenv("BOXRUN_NODE_TOKEN_FILE", raising=False)
    monkeypatch.setenv("BOXRUN_NODE_TOKEN", "bxn_from_env")
    assert Settings().resolved_node_token() == "bxn_from_env"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o601])
def test_a_file_open_to_group_or_others_is_refused(tmp_path, monkeypatch, mode):
    path = tmp_path / "node-token"
    path.write_text("bxn_secret\n")
    path.chmod(mode)
    monkeypatch.setenv("BOXRUN_NODE_TOKEN_FILE", str(path))
    with pytest.raises(ValueError, match=f"open to group or others \\(mode 0{mode:o}\\): chmod 600"):
        Settings().resolved_node_token()


def test_a_missing_file_is_an_error_not_a_silent_fallback(tmp_path):
    settings = Settings(node_token="bxn_from_env", node_token_file=tmp_path / "absent")
    with pytest.raises(FileNotFoundError):
        settings.resolved_node_token()
