"""boxrun.secretbox: sealed values open only with a configured key; rotation by a key list."""

from __future__ import annotations

import pytest

from boxrun.secretbox import SecretBox, SecretBoxError
from boxrun.settings import Settings


def test_a_sealed_value_opens_and_does_not_show_the_plaintext() -> None:
    box = SecretBox(SecretBox.generate_key())
    sealed = box.seal("hunter2-ü")
    assert b"hunter2" not in sealed and box.open(sealed) == "hunter2-ü"
    assert box.seal("x") != box.seal("x")  # a fresh IV every time


def test_another_key_cannot_open_it_and_tampering_is_refused() -> None:
    sealed = SecretBox(SecretBox.generate_key()).seal("v")
    with pytest.raises(SecretBoxError, match="cannot be decrypted"):
        SecretBox(SecretBox.generate_key()).open(sealed)
    box = SecretBox(SecretBox.generate_key())
    good = bytearray(box.seal("v"))
    good[-5] ^= 1
    with pytest.raises(SecretBoxError):
        box.open(bytes(good))


def test_rotation_new_key_first_old_keys_still_open() -> None:
    old, new = SecretBox.generate_key(), SecretBox.generate_key()
    sealed_old = SecretBox(old).seal("v")
    rotated = SecretBox(f"{new},{old}")
    assert rotated.open(sealed_old) == "v"
    assert SecretBox(new).open(rotated.seal("w")) == "w"  # the first key encrypts


def test_settings_give_a_box_and_production_refuses_the_placeholder() -> None:
    assert Settings().secret_box().open(Settings().secret_box().seal("v")) == "v"  # dev placeholder works
    with pytest.raises(ValueError, match="BOXRUN_SECRETS_KEY"):
        Settings(environment="production", api_token="t", s3_secret_access_key="s").require_secrets("secrets_key")
    with pytest.raises(ValueError, match="empty"):
        SecretBox(" , ")
