"""Artifacts are hostile paths: scanned and opened without following links, hard links, foreign
files, special files and names the store cannot take refused with a reason; the rest still goes up."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from boxrun.agent.workspace import ArtifactRefused, RefusedArtifact, Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace.for_job(tmp_path / "agent", "job-a")
    ws.create_from("print(1)", {"in.txt": "x"})
    return ws


def test_good_files_go_up_and_bad_ones_are_listed_with_reasons(ws, tmp_path):
    secret = tmp_path / "secrets.json"
    secret.write_text('{"token": "s3cret"}')
    a = ws.artifacts
    (a / "good.txt").write_bytes(b"hello")
    (a / "sub").mkdir()
    (a / "sub" / "deep.bin").write_bytes(bytes(range(256)))
    (a / "link-to-secret").symlink_to(secret)
    (a / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    os.link(secret, a / "hard-to-secret")  # today's leak: a hard link to the stack's secrets
    (a / "bad\r\nname.txt").write_text("crlf")
    (a / "tab\tname").write_text("tab")
    deep = a / "/".join(["é" * 120] * 4)  # 963 bytes: fine as a directory, too long with what is below it
    deep.mkdir(parents=True)
    (deep / ("ü" * 40)).mkdir()
    (deep / ("ü" * 40) / "f.txt").write_text("too long")
    os.mkfifo(a / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(a / "sock"))
        entries, refused = ws.scan_artifacts()

    assert [(e.path, e.size, e.sha256) for e in entries] == [
        ("good.txt", 5, hashlib.sha256(b"hello").hexdigest()),
        ("sub/deep.bin", 256, hashlib.sha256(bytes(range(256))).hexdigest()),
    ]
    reasons = {r.path: r.reason for r in refused}
    assert reasons["link-to-secret"] == "symbolic link (not followed)"
    assert reasons["linked-dir"] == "symbolic link (not followed)"
    assert reasons["hard-to-secret"].startswith("hard link")
    assert reasons["bad\r\nname.txt"] == "control characters in the name"
    assert reasons["tab\tname"] == "control characters in the name"
    assert reasons["/".join(["é" * 120] * 4 + ["ü" * 40]) + "/"].startswith("name longer than 1,024 bytes")
    assert reasons["fifo"] == "not a regular file (fifo)"
    assert reasons["sock"] == "not a regular file (socket)"
    assert len(refused) == 8
    assert ws.manifest() == entries, "manifest() keeps its old shape: the accepted entries"


def test_an_undecodable_name_is_refused_and_listed_as_valid_text(ws):
    fd = os.open(bytes(ws.artifacts), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(os.open(b"bad-\xff.txt", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    entries, refused = ws.scan_artifacts()
    assert entries == [] and refused == [RefusedArtifact("bad-\ufffd.txt", "name is not valid UTF-8")]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_file_the_job_user_does_not_own_is_refused(ws):
    (ws.artifacts / "mine.txt").write_text("ok")
    (ws.artifacts / "foreign.txt").write_text("not the job's")
    os.chown(ws.artifacts / "foreign.txt", 65534, 65534)
    entries, refused = ws.scan_artifacts()
    assert [e.path for e in entries] == ["mine.txt"]
    assert refused == [
        RefusedArtifact("foreign.txt", f"owned by uid 65534, not by the job's user (uid {os.geteuid()})")
    ]


def test_open_artifact_reads_what_was_scanned_and_refuses_what_changed(ws, tmp_path):
    (ws.artifacts / "d").mkdir()
    (ws.artifacts / "d" / "f.bin").write_bytes(b"12345")
    entries, _ = ws.scan_artifacts()
    with ws.open_artifact("d/f.bin", size=entries[0].size) as fh:
        assert fh.read() == b"12345"

    (ws.artifacts / "d" / "f.bin").write_bytes(b"123456")
    with pytest.raises(ArtifactRefused, match="size changed"):
        ws.open_artifact("d/f.bin", size=5)

    # swapped for a symlinked directory after the scan: not followed
    (ws.artifacts / "d" / "f.bin").unlink()
    (ws.artifacts / "d").rmdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "f.bin").write_bytes(b"12345")
    (ws.artifacts / "d").symlink_to(other, target_is_directory=True)
    with pytest.raises(ArtifactRefused, match="without following links"):
        ws.open_artifact("d/f.bin", size=5)

    # swapped for a hard link
    (ws.artifacts / "h.bin").write_bytes(b"12345")
    os.link(ws.artifacts / "h.bin", other / "h2.bin")
    with pytest.raises(ArtifactRefused, match="hard link"):
        ws.open_artifact("h.bin", size=5)
    with pytest.raises(ArtifactRefused, match="normal relative path"):
        ws.open_artifact("../script.py")


def test_remove_gets_rid_of_a_workspace_the_job_locked(ws):
    locked = ws.work / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f").write_text("x")
    os.chmod(locked / "inner", 0)
    os.chmod(locked, 0)
    ws.remove()
    assert not ws.root.exists()
