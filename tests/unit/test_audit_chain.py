"""The audit log's hash chain and `audit verify`: real files, real edits, real rotation."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from phonehome_jump.audit import AuditLog, SyslogSpec
from phonehome_jump.audit_chain import GENESIS, verify
from phonehome_jump.cli import main
from phonehome_jump.errors import AuditError


def write(path: Path, n: int, **kw) -> None:
    audit = AuditLog(path, **kw)
    for i in range(n):
        audit.record("command", host="h", command=f"echo {i}", exit_status=0)
    audit.close()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_records_are_chained_and_verify_says_ok(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    write(path, 3)
    recs = [json.loads(x) for x in lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3] and recs[0]["prev"] == GENESIS
    assert recs[1]["prev"] == recs[0]["hash"] and recs[2]["prev"] == recs[1]["hash"]
    write(path, 2)                                  # a new process goes on from the file
    recs = [json.loads(x) for x in lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5] and recs[3]["prev"] == recs[2]["hash"]
    report = verify(path)
    assert report.ok and (report.first_seq, report.last_seq, report.records) == (1, 5, 5)
    assert main(["audit", "verify", str(path)]) == 0
    assert "chain intact" in capsys.readouterr().out


def tamper(path: Path, edit) -> None:
    rows = lines(path)
    edit(rows)
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("edit,line,words", [
    (lambda rows: rows.__setitem__(2, rows[2].replace('"echo 2"', '"echo 9"')), 3, "record 3 was edited"),
    (lambda rows: rows.pop(2), 3, "record(s) 3 missing before record 4"),
    (lambda rows: rows.__delitem__(slice(1, 3)), 2, "record(s) 2–3 missing"),
    (lambda rows: rows.insert(1, rows.pop(3)), 2, "reordered"),
    (lambda rows: rows.append(rows[1]), 6, "reordered or repeated"),
    (lambda rows: rows.__setitem__(1, "not json"), 2, "not a JSON record"),
])
def test_verify_names_the_first_broken_record(tmp_path, capsys, edit, line, words):
    path = tmp_path / "a.jsonl"
    write(path, 5)
    tamper(path, edit)
    report = verify(path)
    assert not report.ok and report.where == f"{path}:{line}" and words in report.problem
    assert main(["audit", "verify", str(path)]) == 1
    assert f"{path}:{line}: " in capsys.readouterr().err


def test_a_rewritten_hash_still_breaks_the_link(tmp_path):
    # an edit that also recomputes its own hash: the next record no longer follows it
    from phonehome_jump.audit_chain import digest
    path = tmp_path / "a.jsonl"
    write(path, 4)
    rows = lines(path)
    rec = json.loads(rows[1])
    rec["command"] = "echo innocent"
    rec["hash"] = digest(rec)
    rows[1] = json.dumps(rec)
    path.write_text("\n".join(rows) + "\n")
    report = verify(path)
    assert report.where == f"{path}:3" and "does not follow record 2" in report.problem


def test_the_chain_survives_rotation(tmp_path):
    path = tmp_path / "a.jsonl"
    write(path, 30, max_bytes=600, backups=50)
    assert Path(f"{path}.3").exists()
    report = verify(path)
    assert report.ok and (report.first_seq, report.last_seq) == (1, 30) and len(report.files) > 3
    # a record deleted in a rotated file is found there
    older = Path(f"{path}.2")
    tamper(older, lambda rows: rows.pop(0))
    report = verify(path)
    assert not report.ok and report.where.startswith(f"{older}:") and "missing" in report.problem


def test_rotation_that_drops_old_files_is_not_tampering(tmp_path):
    path = tmp_path / "a.jsonl"
    write(path, 30, max_bytes=600, backups=2)
    report = verify(path)
    assert report.ok and report.first_seq > 1 and "rotated away" in report.text()


def test_processes_sharing_the_log_keep_one_chain(tmp_path):
    path = tmp_path / "a.jsonl"
    a, b = AuditLog(path), AuditLog(path)
    for i in range(4):
        (a if i % 2 else b).record("send", command=f"x{i}")
    a.close(), b.close()
    assert verify(path).ok and verify(path).last_seq == 4


def test_unreadable_or_missing_log_exits_2(tmp_path, capsys):
    assert main(["audit", "verify", str(tmp_path / "nope.jsonl")]) == 2
    assert "no audit log" in capsys.readouterr().err


class SyslogServer:
    """A real unix datagram socket, as /dev/log is, collecting what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.lines: list[str] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.lines.append(data.decode())

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()
        self.path.unlink()


def test_records_reach_syslog_and_a_missing_sink_fails_closed(tmp_path):
    import time
    server = SyslogServer(tmp_path / "log.sock")
    path = tmp_path / "a.jsonl"
    audit = AuditLog(path, syslog=SyslogSpec(address=str(server.path), facility="local3",
                                             tag="phj-test"))
    audit.check()
    audit.record("command", host="h", command="echo hi")
    deadline = time.monotonic() + 5
    while not server.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    (line,) = [x.rstrip("\x00") for x in server.lines]   # SysLogHandler ends with NUL
    # <PRI> = facility local3 (19) * 8 + info (6)
    assert line.startswith("<158>phj-test: {") and json.loads(line.split(": ", 1)[1]) == \
        json.loads(lines(path)[0])
    server.stop()
    with pytest.raises(AuditError, match="syslog"):
        audit.record("command", host="h", command="echo lost")
    with pytest.raises(AuditError, match="syslog"):
        audit.check()                               # and the next action is refused
    audit.close()
    # never connected at all: refused at once
    with pytest.raises(AuditError, match="syslog"):
        AuditLog(tmp_path / "b.jsonl", syslog=SyslogSpec(address=str(tmp_path / "none"))).check()
