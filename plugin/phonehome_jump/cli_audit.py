"""``phonehome-jump audit verify [PATH]``: check the audit log's hash chain (cli.py adds it).

Exit codes: 0 the chain is intact; 1 a record is edited, missing, reordered or not a record
(the first one is named as file:line); 2 the log cannot be read (or no PATH was given).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .audit_chain import UNREADABLE, Unreadable, verify


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    audit = commands.add_parser("audit", parents=[common], help="check the audit log",
                                description="Audit log tools.")
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "verify", parents=[common], help="check the audit log's hash chain",
        description="Check the hash chain of an audit log and its rotated files (PATH.N … "
                    "PATH.1, PATH). Exit 0: intact; 1: the first edited, missing, reordered "
                    "or broken record is named as file:line; 2: the log cannot be read.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="the audit log (default: --audit-log or $PHONEHOME_JUMP_AUDIT_LOG)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_audit_verify)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    path = args.path or args.audit_log
    if not path:
        print("phonehome-jump: audit verify needs the log's PATH (or --audit-log)",
              file=sys.stderr)
        return UNREADABLE
    try:
        report = verify(path)
    except Unreadable as exc:
        print(f"phonehome-jump: {exc}", file=sys.stderr)
        return UNREADABLE
    if args.json:
        print(json.dumps({"ok": report.ok, "problem": report.problem, "where": report.where,
                          "records": report.records, "first_seq": report.first_seq,
                          "last_seq": report.last_seq, "files": report.files,
                          "notes": report.notes}, indent=2))
    else:
        print(report.text(), file=sys.stdout if report.ok else sys.stderr)
    return report.exit_code
