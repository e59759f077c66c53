"""Audit log file handling: JSON Lines, masking, 0600, rotation, fail closed (local files)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from phonehome_jump.audit import AuditLog
from phonehome_jump.errors import AuditError
from phonehome_jump.redact import add_secret


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_json_lines_masked_and_private(tmp_path):
    add_secret("canary-audit-91a2b3")
    path = tmp_path / "audit" / "log.jsonl"
    path.parent.mkdir()
    audit = AuditLog(path)
    audit.check()
    audit.record("command", actor="cli:me", host="h", command="echo canary-audit-91a2b3",
                 exit_status=0, cwd=None)
    audit.close()
    audit.record("close", host="h")          # reopens after close
    records = lines(path)
    assert [r["event"] for r in records] == ["command", "close"]
    assert records[0]["command"] == "echo ********" and "cwd" not in records[0]
    assert records[0]["time"].endswith("+00:00")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "canary-audit-91a2b3" not in path.read_text()


def test_rotation_is_the_logging_handlers(tmp_path):
    path = tmp_path / "log.jsonl"
    audit = AuditLog(path, max_bytes=300, backups=2)
    for i in range(20):
        audit.record("send", command=f"line {i}", pad="x" * 50)
    audit.close()
    assert (tmp_path / "log.jsonl.1").exists() and (tmp_path / "log.jsonl.2").exists()
    assert not (tmp_path / "log.jsonl.3").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "log.jsonl.1").st_mode) == 0o600


def test_unwritable_path_fails_closed_with_a_message(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    audit = AuditLog(blocker / "audit.jsonl")      # a path under a regular file
    with pytest.raises(AuditError) as info:
        audit.check()
    assert "cannot write the audit log" in str(info.value) and "try:" in str(info.value)
    with pytest.raises(AuditError):
        audit.record("command", command="true")


def test_on_error_continue_only_warns(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    audit = AuditLog(blocker / "audit.jsonl", on_error="continue")
    audit.check()
    audit.record("command", command="true")
    assert "cannot write the audit log" in caplog.text


def test_transcripts_are_masked_and_private(tmp_path):
    add_secret("canary-transcript-44")
    audit = AuditLog(tmp_path / "a.jsonl", transcripts=tmp_path / "t")
    audit.transcript("s-1", "$ echo canary-transcript-44\ncanary-transcript-44\n")
    text = (tmp_path / "t" / "s-1.log").read_text()
    assert "canary-transcript-44" not in text and text.count("********") == 2
    assert stat.S_IMODE(os.stat(tmp_path / "t" / "s-1.log").st_mode) == 0o600


def test_a_full_disk_keeps_refusing_until_a_record_is_written():
    audit = AuditLog("/dev/full", max_bytes=0)     # opens fine, every write fails (ENOSPC)
    audit.check()
    with pytest.raises(AuditError, match="No space left"):
        audit.record("command", command="true")
    with pytest.raises(AuditError, match="No space left"):
        audit.check()                            # opening works, so check() must probe
    with pytest.raises(AuditError):
        audit.check()


def test_a_transcript_failure_warns_then_refuses_the_next_action(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    audit = AuditLog(tmp_path / "a.jsonl", transcripts=blocker / "t")
    audit.transcript("s-1", "$ true\n")         # after the action: only a warning
    assert "cannot write the transcript" in caplog.text
    with pytest.raises(AuditError, match="transcripts directory"):
        audit.check()
