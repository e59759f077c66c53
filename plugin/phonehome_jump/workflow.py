"""Workflows: multi-step YAML runbooks run the same way by schedulers, engineers and Claude.

    wf = Workflow.load("workflows/sl1-health.yaml")
    wf.check(inventory)                       # file:line problems: unknown hosts, undefined vars
    result = run_workflow(wf, inventory)      # RunResult: per host, per step; result.failed_hosts

A workflow names its targets (a group, hosts or tags), variables and steps. On each host
the steps run in order in **one** persistent session (cwd and shell state carry over);
hosts run in parallel up to ``concurrency``. Substitution is :class:`string.Template` with
only the braced form ``${name}`` recognised, so shell syntax (``$HOME``, ``$?``, ``$(cmd)``,
``$1``) passes through untouched; ``$${name}`` writes a literal ``${name}`` for the shell.
In the regular expressions (``assert``, ``capture.regex``) a value is substituted escaped:
``${ver}`` matches the value literally (``1.2.3`` does not match ``1x2y3``).

Names available to ``${...}``: ``vars``, ``--var`` values, captures of *earlier* steps,
and the built-ins ``host`` (inventory name) and ``workflow``. :meth:`Workflow.check` (which
knows the ``--var`` values) reports a name that is none of these with its file:line; a
variable without a default in ``vars`` must then come from ``--var``.

Secrets are never in the file: an ``answer`` sends ``env:NAME`` / ``file:PATH`` (or the
host's own ``inventory:sudo_password`` / ``inventory:password``), resolved when the prompt
appears, sent with ``secret=True`` so the session masks it in every output, and never
logged, returned or written to a report.

Output of any size costs bounded memory: a step's result keeps the first and last
:data:`STEP_KEEP` characters (``truncated``, ``omitted``); assert, capture and parse read the
whole output by pages only while it is at most the manager's ``output_memory``, and past it
the step fails saying so; answer prompts are matched against the newest text only.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic import field_validator, model_validator

from .errors import (PatternError, PatternTimeoutError, PhonehomeJumpError, PolicyError,
                     SecretError, SessionDeadError, WorkflowError, WorkflowLockedError)
from .inputs import MAX_SECONDS, Seconds, Whole, check_text
from .inventory import Inventory, InventoryProblems, SecretRef, _explain, _fmt, _suggest
from .manager import SessionManager
from .output import ENV_MEMORY, KEEP, omission, pages
from .patterns import MULTILINE, compile_safe
from .prompts import awaiting_input
from .yamlload import YamlProblem, parse_yaml, read_text, within_memory

log = logging.getLogger(__name__)

__all__ = [
    "Workflow", "WorkflowFile", "StepSpec", "AnswerSpec", "AssertSpec", "CaptureSpec",
    "TargetsSpec", "WorkflowProblems", "StepResult", "HostResult", "RunResult", "Event",
    "WorkflowLock", "run_workflow", "plan", "junit_xml", "parse_vars", "discover",
    "discover_loaded", "load_cached",
]

BUILTIN_VARS = ("host", "workflow")
MAX_WORKFLOW_BYTES = 2**20       # one workflow file (1 MiB)
POLL = 0.5                      # seconds a step waits between checks for cancellation
STEP_KEEP = 65_536              # characters of each end of a step's output kept in its result
PROMPT_WINDOW = 65_536          # newest characters (since the last answer) searched for a prompt
STATE_ENV = "PHONEHOME_JUMP_STATE"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------- substitution

class BracedTemplate(string.Template):
    """``${name}`` only. ``$HOME``, ``$?``, ``$(...)`` are the shell's; ``$${x}`` is ``${x}``."""

    pattern = r"""
        \$(?:
          (?P<escaped>\$)(?=\{)                        |  # $${x} -> ${x}
          \{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)\}       |
          (?P<named>(?!))                              |  # never: $name is the shell's
          (?P<invalid>(?!))
        )"""


def names_in(text: str) -> list[str]:
    return BracedTemplate(text).get_identifiers()


def substitute(text: str, values: Mapping[str, str], *, regex: bool = False) -> str:
    """``${name}`` -> its value; ``regex=True`` escapes the values (they match literally).

    Raises KeyError naming a variable that has no value.
    """
    if regex:
        values = {k: re.escape(v) for k, v in values.items()}
    return BracedTemplate(text).substitute(values)


# --------------------------------------------------------------------------- file models

_CFG = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, populate_by_name=True)


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, (str, int)) and not isinstance(value, bool) else value


def _regex(value: str) -> str:
    # checked as it will run: each ${name} becomes its (escaped) value, here a plain letter
    probe = BracedTemplate(value).safe_substitute({n: "x" for n in names_in(value)})
    try:
        compile_safe(probe, flags=MULTILINE)
    except PatternError as exc:
        raise ValueError(f"is not a valid regular expression ({exc.detail})") from None
    return value


Regex = Annotated[str, Field(min_length=1), AfterValidator(_regex)]
_INVENTORY_SECRETS = ("sudo_password", "password")


class AnswerSpec(BaseModel):
    """One interactive prompt and what to type at it (answers are used in order)."""

    model_config = _CFG
    prompt: Regex = Field(description="Regular expression matched against the command's output "
                                      r"so far, e.g. '\[sudo\] password'.")
    send: str | None = Field(None, description="A secret reference: env:NAME, file:PATH, or "
                                               "inventory:sudo_password / inventory:password "
                                               "(the host's own credentials). Masked in output.")
    text: str | None = Field(None, description="A literal, non-secret answer (e.g. 'y').")

    @field_validator("send")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("inventory:"):
            if value.removeprefix("inventory:") not in _INVENTORY_SECRETS:
                raise ValueError("inventory: reference must be inventory:sudo_password or "
                                 "inventory:password")
            return value
        SecretRef.parse(value)     # ValueError never echoes the value (it may be a password)
        return value

    @model_validator(mode="after")
    def _one(self) -> AnswerSpec:
        if (self.send is None) == (self.text is None):
            raise ValueError("give exactly one of send (a secret reference) or text (a literal)")
        return self


class AssertSpec(BaseModel):
    """Checks on a step's output (searched line by line: ^ and $ match at each line)."""

    model_config = _CFG
    regex: Regex | None = Field(None, description="Must match somewhere in the output.")
    not_regex: Regex | None = Field(None, description="Must not match anywhere in the output.")
    row: dict[str, Regex] | None = Field(
        None, description="With parse: true, some parsed row must match every field's regex "
                          "(e.g. {interface: 'GigabitEthernet0/1', status: up}).")
    no_row: dict[str, Regex] | None = Field(
        None, description="With parse: true, no parsed row may match every field's regex.")

    @model_validator(mode="after")
    def _some(self) -> AssertSpec:
        if self.regex is None and self.not_regex is None and self.row is None and self.no_row is None:
            raise ValueError("give regex, not_regex, row and/or no_row")
        return self


class CaptureSpec(BaseModel):
    """Store part of the output in a variable for later steps."""

    model_config = _CFG
    name: str = Field(description="Variable name; later steps use ${name}.")
    regex: Regex | None = Field(None, description="Capture the first group (or the whole match) "
                                                  "instead of the whole output; no match fails "
                                                  "the step.")
    field: str | None = Field(None, description="With parse: true, this field of the first "
                                                "parsed row (a list is joined with commas).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be a variable name: letters, digits and _, not starting "
                             "with a digit")
        if value in BUILTIN_VARS:
            raise ValueError(f"'{value}' is a built-in variable; pick another name")
        return value


def _capture(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


ExitCodes = Annotated[tuple[Annotated[Whole, Field(ge=0, le=255)], ...],
                     BeforeValidator(_as_tuple)]


class CopySpec(BaseModel):
    """A file copy through the host's chain (the inventory's files policy applies)."""

    model_config = _CFG
    src: str = Field(min_length=1, description="upload: a local file; download: a path on the "
                                               "host. ${var} is substituted.")
    dest: str = Field(min_length=1, description="upload: a path on the host; download: a local "
                                                "path (an existing directory keeps the name).")
    resume: bool = Field(False, description="Continue a matching partial copy.")


class StepSpec(BaseModel):
    """One command (or file copy) on every target host, in the host's persistent session."""

    model_config = _CFG
    name: str | None = Field(None, description="Label for progress and reports (default: run).")
    run: str | None = Field(None, min_length=1,
                            description="Shell command line; ${var} is substituted.")
    upload: CopySpec | None = Field(None, description="Instead of run: copy a local file to the "
                                                      "host (SHA-256 verified); the output is a "
                                                      "one-line summary.")
    download: CopySpec | None = Field(None, description="Instead of run: copy a file from the "
                                                        "host to this machine.")
    expect_exit: ExitCodes | Literal["any"] = Field(
        (0,), description="Exit status(es) that pass; 'any' to ignore it. Default 0. Not checked "
                          "on devices without exit statuses (native framing).")
    capture: Annotated[CaptureSpec | None, BeforeValidator(_capture)] = Field(
        None, description="NAME (the whole output, trailing newline stripped) or "
                          "{name, regex}.")
    answer: tuple[AnswerSpec, ...] = Field((), description="Prompts answered in order.")
    assert_: AssertSpec | None = Field(None, alias="assert", description="Output checks.")
    on_fail: Literal["stop", "continue"] = Field(
        "stop", description="stop: skip this host's remaining steps (default); continue: go on.")
    timeout: Seconds | None = Field(None, gt=0, le=MAX_SECONDS,
                                    description="Seconds for this step (default: the "
                                                "workflow's step_timeout).")
    confirm: bool = Field(False, description="Confirm a command the host's policy asks to "
                                             "confirm (the runbook's author confirms in writing).")
    parse: bool = Field(False, description="Network devices: parse the output into rows "
                                           "(TextFSM / ntc-templates) for assert row/no_row and "
                                           "capture field.")
    config: bool = Field(False, description="Network devices: `run` holds configuration lines "
                                            "(one per line), applied in configuration mode; a "
                                            "line the device rejects fails the step.")
    commit: bool = Field(False, description="With config: true, commit at the end (Junos).")

    @model_validator(mode="after")
    def _modes(self) -> StepSpec:
        if self.config and (self.parse or self.answer):
            raise ValueError("a config step cannot also parse or answer prompts")
        if self.commit and not self.config:
            raise ValueError("commit needs config: true")
        if (self.config or self.parse) and self.run is None:
            raise ValueError("config and parse are for run steps")
        if not self.parse and ((self.assert_ and (self.assert_.row or self.assert_.no_row))
                               or (self.capture and self.capture.field)):
            raise ValueError("assert row/no_row and capture field need parse: true")
        return self

    @model_validator(mode="after")
    def _one_action(self) -> "StepSpec":
        given = [k for k in ("run", "upload", "download") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a step needs exactly one of run, upload, download"
                             + (f" (it has {', '.join(given)})" if given else ""))
        if self.run is None and self.answer:
            raise ValueError("answer is for run steps (a copy asks no questions)")
        return self

    @property
    def copy(self) -> tuple[str, CopySpec] | None:
        if self.upload is not None:
            return "upload", self.upload
        if self.download is not None:
            return "download", self.download
        return None

    @property
    def text(self) -> str:
        """The command line, or ``upload SRC DEST`` / ``download SRC DEST`` for a copy."""
        if self.run is not None:
            return self.run
        kind, spec = self.copy  # type: ignore[misc]
        return f"{kind} {spec.src} {spec.dest}"

    @property
    def label(self) -> str:
        return self.name or self.text.strip().splitlines()[0][:60]


class TargetsSpec(BaseModel):
    """Which inventory hosts the workflow runs on: exactly one of group, hosts or tags."""

    model_config = _CFG
    group: str | None = Field(None, description="Every host of this inventory group.")
    hosts: Annotated[tuple[str, ...], BeforeValidator(_as_tuple)] | None = Field(
        None, description="These inventory hosts.")
    tags: Annotated[tuple[str, ...], BeforeValidator(_as_tuple)] | None = Field(
        None, description="Hosts carrying every one of these tags.")

    @model_validator(mode="after")
    def _one(self) -> TargetsSpec:
        given = [k for k in ("group", "hosts", "tags") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of group, hosts or tags"
                             + (f" (got {', '.join(given)})" if given else ""))
        return self


class WorkflowFile(BaseModel):
    """A phonehome-jump workflow file (workflows/*.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True,
                              title="phonehome-jump workflow")
    name: str = Field(min_length=1, description="Workflow name (MCP workflow_run uses it).")
    description: str | None = Field(None, description="What the workflow is for.")
    targets: TargetsSpec
    concurrency: Whole = Field(10, ge=1, le=100, description="Hosts in parallel. Default 10.")
    step_timeout: Seconds = Field(60.0, gt=0, le=MAX_SECONDS,
                                  description="Default seconds per step. Default 60.")
    vars: dict[str, str] = Field({}, description="Variables for ${name}; --var overrides.")
    steps: tuple[StepSpec, ...] = Field(min_length=1, description="Run in order on each host.")

    @field_validator("vars")
    @classmethod
    def _var_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _NAME.fullmatch(key):
                raise ValueError(f"variable name {key!r} must be letters, digits and _")
            if key in BUILTIN_VARS:
                raise ValueError(f"'{key}' is a built-in variable; pick another name")
        return value


# --------------------------------------------------------------------------- loading

class WorkflowProblems(InventoryProblems, WorkflowError):
    """All problems of one workflow file (and its targets), each ``file:line: what``."""

    @property
    def message(self) -> str:
        if len(self.problems) == 1:
            where, what = self.problems[0]
            return f"{where}: {what}"
        return "\n".join([f"{len(self.problems)} problems in the workflow (fix all, then rerun):"]
                         + [f"  {where}: {what}" for where, what in self.problems])


def _explain_wf(err: Any, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        fields = _fields_at(model, tuple(err["loc"][:-1]))
        where = _path_text(tuple(err["loc"][:-1]))
        return f"unknown key '{key}'" + (f" in {where}" if where else "") + _suggest(key, fields)
    return _explain(err, model)


_UNION_HELP = {"expect_exit": "must be a whole number, a list of whole numbers, or 'any'",
               "capture": "must be a variable name or a mapping {name, regex}"}


def _validation_problems(exc: ValidationError,
                         lines: Mapping[tuple[str | int, ...], int]) -> list[tuple[int | None, str]]:
    """pydantic errors -> (line, message); a union's alternatives collapse into one message."""
    out: list[tuple[int | None, str]] = []
    seen: set[tuple[Any, ...]] = set()
    errors = exc.errors()
    for err in errors:
        if err["type"] == "too_short" and any(
                len(e["loc"]) > len(err["loc"]) and e["loc"][:len(err["loc"])] == err["loc"]
                for e in errors):
            continue   # pydantic also calls a tuple with a bad item too short: noise
        # a union's members show up in loc as 'function-before[...]' / "literal['any']"
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        union = next((k for k in _UNION_HELP if k in loc), None)
        if union is not None and err["type"] != "extra_forbidden":
            key = loc[:loc.index(union) + 1]
            if key not in seen:
                seen.add(key)
                out.append((_line(lines, key), f"{_path_text(key)} {_UNION_HELP[union]}"))
            continue
        out.append((_line(lines, loc), _explain_wf({**err, "loc": loc}, WorkflowFile)))
    return out


def _path_text(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (for 'did you mean'), following nested models and lists."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part) or next(
            (f for f in getattr(current, "model_fields", {}).values() if f.alias == part), None)
        if info is None:
            return []
        current = _model_in(info.annotation)
        if current is None:
            return []
    return [f.alias or n for n, f in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if (m := _model_in(arg)) is not None:
            return m
    meta = getattr(annotation, "__origin__", None)
    return _model_in(meta) if meta not in (None, annotation) else None


@dataclass(frozen=True)
class Workflow:
    """A validated workflow file plus where each of its keys is (for file:line messages)."""

    spec: WorkflowFile
    file: str
    lines: Mapping[tuple[str | int, ...], int] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    def at(self, *path: str | int) -> str:
        key: tuple[str | int, ...] = path
        while key:                      # longest recorded prefix
            if key in self.lines:
                return _fmt(self.file, self.lines[key])
            key = key[:-1]
        return _fmt(self.file, 1)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Workflow:
        file = Path(path)
        try:
            text = read_text(file, MAX_WORKFLOW_BYTES)
        except YamlProblem as exc:
            raise WorkflowProblems([(str(file), exc.what)]) from None
        except UnicodeDecodeError as exc:
            line = exc.object[:exc.start].count(b"\n") + 1
            raise WorkflowError(f"the file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                f"at offset {exc.start})", where=f"{file}:{line}",
                                hint="save it as UTF-8") from None
        except OSError as exc:
            raise WorkflowError(f"cannot read workflow file: {exc.strerror or exc}",
                                where=str(file), hint="check the path and its permissions") from exc
        return cls.from_text(text, str(file))

    @classmethod
    def from_text(cls, text: str, source: str = "<string>") -> Workflow:
        problems: list[tuple[int | None, str]] = []
        try:
            data, lines, found = parse_yaml(text, MAX_WORKFLOW_BYTES)
        except YamlProblem as exc:
            raise WorkflowProblems([(_fmt(source, exc.line), exc.what)]) from None
        problems += found
        wf = None
        if not isinstance(data, dict):
            problems.append((1, "a workflow must be a mapping with name, targets and steps"))
        else:
            try:
                spec = WorkflowFile.model_validate(data)
                wf = cls(spec, source, lines)
            except ValidationError as exc:
                problems += _validation_problems(exc, lines)
        if problems:
            problems.sort(key=lambda p: p[0] or 0)
            raise WorkflowProblems([(_fmt(source, line), what) for line, what in problems])
        assert wf is not None
        return wf

    # -- checks that need the command line or the inventory
    def _variable_problems(self, extra: Mapping[str, str]) -> list[tuple[int | None, str]]:
        known = set(self.spec.vars) | set(extra) | set(BUILTIN_VARS)
        out = []
        for i, step in enumerate(self.spec.steps):
            texts: list[tuple[Any, str]] = ([("run", step.run)] if step.run is not None else [
                ((kind, k), getattr(spec, k)) for kind, spec in [step.copy] for k in ("src", "dest")])
            if step.assert_ is not None:
                texts += [(("assert", k), getattr(step.assert_, k)) for k in ("regex", "not_regex")
                          if getattr(step.assert_, k)]
            if step.capture is not None and step.capture.regex is not None:
                texts.append((("capture", "regex"), step.capture.regex))
            for key, text in texts:
                path = ("steps", i) + (key if isinstance(key, tuple) else (key,))
                for name in names_in(text):
                    if name in known:
                        continue
                    later = [j for j, s in enumerate(self.spec.steps)
                             if s.capture and s.capture.name == name and j >= i]
                    why = (f"it is captured only by step {later[0] + 1}, later" if later
                           else "define it under vars, pass --var " + name + "=VALUE, or capture it"
                           " in an earlier step; for a shell variable write $" + name
                           + " or $${" + name + "}")
                    out.append((_line(self.lines, path),
                                f"step {i + 1}: undefined variable '{name}' ({why})"
                                + _suggest_known(name, known)))
            if step.capture is not None:
                known.add(step.capture.name)
        return out

    def check(self, inventory: Inventory, *, hosts: Sequence[str] | None = None,
              vars: Mapping[str, str] | None = None) -> list[str]:
        """Validate against the inventory and the command line; returns the target host names.

        Raises :class:`WorkflowProblems` naming file:line for unknown hosts/groups, tags no
        host carries, --hosts outside the targets, and undefined variables.
        """
        problems: list[tuple[str, str]] = []
        t = self.spec.targets
        names: list[str] = []
        if t.group is not None:
            if t.group not in inventory.groups():
                problems.append((self.at("targets", "group"),
                                 f"targets.group: unknown group '{t.group}' in the inventory"
                                 + _suggest(t.group, inventory.groups())))
            else:
                names = [x.name for x in inventory.targets(group=t.group)]
                if not names:
                    problems.append((self.at("targets", "group"),
                                     f"targets.group: group '{t.group}' has no hosts"))
        elif t.hosts is not None:
            for i, h in enumerate(t.hosts):
                if h not in inventory:
                    problems.append((self.at("targets", "hosts", i),
                                     f"targets.hosts: unknown host '{h}' in the inventory"
                                     + _suggest(h, inventory.names())))
                elif h not in names:
                    names.append(h)
        else:
            assert t.tags is not None
            names = [x.name for x in inventory.targets() if set(t.tags) <= set(x.tags)]
            if not names:
                problems.append((self.at("targets", "tags"),
                                 f"targets.tags: no inventory host has every tag of "
                                 f"{', '.join(t.tags)}"))
        if hosts is not None and not hosts:
            problems.append((f"workflow {self.name!r}",
                             "hosts is empty: omit it to run on every target"))
        elif hosts is not None:
            for h in hosts:
                if h not in names:
                    where = "--hosts"
                    problems.append((where, f"host '{h}' is not a target of workflow "
                                            f"'{self.name}' ({self.at('targets')})"
                                     + _suggest(h, names)))
            names = [n for n in names if n in hosts]
        bad_vars = [k for k in (vars or {}) if not _NAME.fullmatch(k) or k in BUILTIN_VARS]
        problems += [("--var", f"'{k}' is not a usable variable name") for k in bad_vars]
        problems += [(_fmt(self.file, line), what)
                     for line, what in self._variable_problems(vars or {})]
        if problems:
            raise WorkflowProblems(problems)
        return names


def _line(lines: Mapping[tuple[str | int, ...], int], loc: tuple[Any, ...]) -> int | None:
    key = tuple(loc)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return None


def _suggest_known(name: str, known: Iterable[str]) -> str:
    s = _suggest(name, known)
    return s if s.startswith(" (did you mean") else ""


def parse_vars(items: Iterable[str]) -> dict[str, str]:
    """``["k=v", ...]`` from --var; raises WorkflowError on a malformed item."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        check_text(value, f"--var {key}", where="--var")
        if not sep or not _NAME.fullmatch(key):
            raise WorkflowError(f"--var wants NAME=VALUE, got {item.split('=')[0]!r}...",
                                where="--var", hint="e.g. --var service=em7")
        out[key] = value
    return out


_CACHE: dict[Path, tuple[tuple[int, ...], Workflow | WorkflowError]] = {}
_CACHE_LOCK = threading.Lock()


def load_cached(file: Path) -> Workflow | WorkflowError:
    """The workflow in ``file`` (or why it cannot be loaded), parsed again only when the file
    changed (inode, size, mtime, ctime): listing a directory does not re-parse every file."""
    try:
        st = file.stat()
    except OSError as exc:
        return WorkflowError(f"cannot read workflow file: {exc.strerror or exc}", where=str(file),
                             hint="check the path and its permissions")
    key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _CACHE_LOCK:
        hit = _CACHE.get(file)
    if hit is not None and hit[0] == key:
        return hit[1]
    # one bad file never breaks the others
    why = "out of memory"
    try:
        loaded: Workflow | WorkflowError | None = within_memory(lambda: Workflow.load(file))
    except WorkflowError as exc:
        loaded = exc
    except RecursionError:
        loaded, why = None, "nested too deeply"
    if loaded is None:          # said outside any handler (see yamlload.within_memory)
        loaded = WorkflowError(f"cannot load the workflow ({why})", where=str(file),
                               hint="check the file; it may be far too big")
    _remember(file, key, loaded)
    return loaded


def _remember(file: Path, key: tuple[int, ...], loaded: Workflow | WorkflowError) -> None:
    with _CACHE_LOCK:           # short, like yamlload.within_memory
        _CACHE[file] = (key, loaded)


def discover_loaded(directory: str | os.PathLike[str]) -> dict[str, Workflow | WorkflowError]:
    """Workflow name -> workflow (or its load error, keyed by file stem) for a directory."""
    out: dict[str, Workflow | WorkflowError] = {}
    root = Path(directory)
    if not root.is_dir():
        return out
    for file in sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml")
                       and not p.name.startswith(".") and p.is_file()):
        loaded = load_cached(file)
        out.setdefault(loaded.name if isinstance(loaded, Workflow) else file.stem, loaded)
    return out


def discover(directory: str | os.PathLike[str]) -> dict[str, Path | WorkflowError]:
    """Workflow name -> file (or its load error, keyed by file stem) for a directory."""
    return {name: Path(wf.file) if isinstance(wf, Workflow) else wf
            for name, wf in discover_loaded(directory).items()}


# --------------------------------------------------------------------------- results

Status = Literal["passed", "failed", "skipped"]


@dataclass
class StepResult:
    index: int                       # 1-based
    name: str
    command: str                     # after substitution (variables only; never a secret)
    status: Status
    output: str = ""                 # secrets masked by the session; at most STEP_KEEP of each end
    exit_status: int | None = None
    duration: float = 0.0
    captured: dict[str, str] = field(default_factory=dict)
    message: str | None = None       # why it failed or was skipped
    parsed: list[dict[str, Any]] | None = None   # parse: true, the rows
    truncated: bool = False          # ``output`` is the head and tail of a longer output
    omitted: tuple[int, int] | None = None   # [start, end) of the whole output left out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["omitted"] = list(self.omitted) if self.omitted else None
        return d


@dataclass
class HostResult:
    host: str
    status: Literal["passed", "failed", "running", "pending"]
    steps: list[StepResult] = field(default_factory=list)
    duration: float = 0.0
    error: str | None = None         # the host could not be run (connect, dead session)
    vars: dict[str, str] = field(default_factory=dict)   # captures at the end

    def to_dict(self) -> dict[str, Any]:
        steps = list(self.steps)        # a snapshot: the run may be appending to it
        return {"host": self.host, "status": self.status,
                "steps": [s.to_dict() for s in steps], "duration": self.duration,
                "error": self.error, "vars": dict(self.vars)}


@dataclass
class RunResult:
    workflow: str
    file: str
    started: float                   # Unix time
    hosts: dict[str, HostResult]
    duration: float = 0.0
    dry_run: bool = False
    finished: bool = False

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, r in dict(self.hosts).items() if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return self.finished and not self.failed_hosts

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        # another thread may be running the workflow: iterate over copies (dict(d) and
        # list(l) of builtins are single steps under the GIL), never over the live containers
        hosts = dict(self.hosts)
        return {"workflow": self.workflow, "file": self.file, "started": self.started,
                "duration": round(self.duration, 4), "dry_run": self.dry_run,
                "finished": self.finished, "ok": self.ok,
                "failed_hosts": [h for h, r in hosts.items() if r.status == "failed"],
                "hosts": {h: r.to_dict() for h, r in hosts.items()}}


@dataclass(frozen=True)
class Event:
    """Progress: a host started, a step ended, a host ended."""

    kind: Literal["host_start", "step", "host_end"]
    host: str
    step: StepResult | None = None
    result: HostResult | None = None
    total_steps: int = 0


# --------------------------------------------------------------------------- running

def plan(wf: Workflow, hosts: Sequence[str], vars: Mapping[str, str] | None = None) -> RunResult:
    """What a run would do (dry run): commands with variables substituted, no host touched.

    Captures are unknown until the run, so they stay as ``${name}``.
    """
    result = RunResult(wf.name, wf.file, time.time(), {}, dry_run=True, finished=True)
    for host in hosts:
        values = {**wf.spec.vars, **(vars or {}), "host": host, "workflow": wf.name}
        steps = []
        for i, step in enumerate(wf.spec.steps, 1):
            steps.append(StepResult(i, BracedTemplate(step.label).safe_substitute(values),
                                    BracedTemplate(step.text).safe_substitute(values),
                                    "skipped", message="dry run"))
        result.hosts[host] = HostResult(host, "passed", steps)
    return result


def _resolve_answer(answer: AnswerSpec, inventory: Inventory, host: str) -> tuple[str, bool]:
    """(text, secret) for an answer, read now; SecretError never carries the value."""
    if answer.text is not None:
        return answer.text, False
    assert answer.send is not None
    where = f"host {host!r} answer to {answer.prompt!r}"
    if answer.send.startswith("inventory:"):
        key = answer.send.removeprefix("inventory:")
        ref = getattr(inventory.target(host).endpoint.auth, key)
        if ref is None:
            raise SecretError(f"the host's credentials have no {key}", where=where,
                              hint=f"set {key}: env:NAME in the host's credentials entry, or "
                                   "send env:NAME / file:PATH")
        return ref.resolve(where), True
    return SecretRef.parse(answer.send).resolve(where), True


def _expected(step: StepSpec, status: int | None) -> str | None:
    if step.expect_exit == "any" or status is None or status in step.expect_exit:
        return None
    want = " or ".join(str(c) for c in step.expect_exit)
    return f"exit status {status}, expected {want}"


#: Seconds to wait for the prompt after a Ctrl-C; it ends as soon as the prompt is back (a
#: loaded machine can take seconds, and a step still running would skip the host's next steps).
INTERRUPT_WAIT = 20.0
INTERRUPT_REPEAT = 2.0          # seconds between repeated Ctrl-Cs while the prompt stays away


class _HostRun:
    """One host: one session, the steps in order."""

    def __init__(self, wf: Workflow, manager: SessionManager, host: str, values: dict[str, str],
                 emit: Callable[[Event], None], cancel: threading.Event, owner: str | None,
                 result: HostResult) -> None:
        self.wf, self.m, self.host, self.values = wf, manager, host, values
        self.emit, self.cancel, self.owner, self.result = emit, cancel, owner, result
        # the most of one output asserts, capture and parse may hold: what the session keeps
        # in memory (its buffer's own floor included)
        self.limit = max(manager.output_memory, 4 * KEEP)

    def run(self) -> HostResult:
        r = self.result
        r.status = "running"
        t0 = time.monotonic()
        self.emit(Event("host_start", self.host, total_steps=len(self.wf.spec.steps)))
        sid = None
        try:
            sid = self.m.open(self.host, owner=self.owner, actor=f"workflow:{self.wf.name}").id
            stopped: str | None = None
            for i, step in enumerate(self.wf.spec.steps, 1):
                if stopped is None and self.cancel.is_set():
                    stopped = "the run was cancelled"
                if stopped is not None:
                    sr = StepResult(i, step.label, step.text, "skipped", message=stopped)
                else:
                    sr = self.step(sid, i, step)
                    self._audit(sid, sr)
                    if sr.status == "failed" and (step.on_fail == "stop" or self.m.read(
                            sid, owner=self.owner).running):
                        stopped = f"step {i} failed"
                r.steps.append(sr)
                self.emit(Event("step", self.host, step=sr, total_steps=len(self.wf.spec.steps)))
        except PhonehomeJumpError as err:
            r.error = str(err)
            if sid is not None and len(r.steps) < len(self.wf.spec.steps):  # failed mid-step
                step = self.wf.spec.steps[len(r.steps)]
                r.steps.append(StepResult(len(r.steps) + 1, step.label, step.text, "failed",
                                          message=err.what))
                self._audit(sid, r.steps[-1])
            for i, step in enumerate(self.wf.spec.steps[len(r.steps):], len(r.steps) + 1):
                r.steps.append(StepResult(i, step.label, step.text, "skipped",
                                          message="not run: " + err.what))
        finally:
            if sid is not None:
                try:
                    self.m.close(sid, owner=self.owner)
                except PhonehomeJumpError:
                    pass
        r.vars = {k: v for k, v in self.values.items()
                  if k not in self.wf.spec.vars and k not in BUILTIN_VARS}
        r.duration = round(time.monotonic() - t0, 4)
        r.status = "failed" if r.error or any(s.status == "failed" for s in r.steps) else "passed"
        self.emit(Event("host_end", self.host, result=r, total_steps=len(self.wf.spec.steps)))
        return r

    def _audit(self, sid: str, sr: StepResult) -> None:
        self.m.record("workflow_step", strict=False, actor=f"workflow:{self.wf.name}",
                      host=self.host, session_id=sid, step=sr.index, command=sr.command,
                      exit_status=sr.exit_status, duration=sr.duration, outcome=sr.status,
                      message=sr.message)

    def step(self, sid: str, index: int, step: StepSpec) -> StepResult:
        """Run one step; a mistake in it (an uncaptured variable, a policy refusal, an unset
        secret) is a failed step with a message, so ``on_fail`` decides what happens next.

        Failures of the session itself (dead, unreachable, audit log unwritable) raise.
        """
        name = BracedTemplate(step.label).safe_substitute(self.values)   # ${vars} in names too
        try:
            command = self._sub(index, step.text)
        except _StepProblem as problem:
            return StepResult(index, name, step.text, "failed", message=problem.message)
        sr = StepResult(index, name, command, "failed")
        t0 = time.monotonic()
        # a step that never looks into its output needs no more of it than its result shows
        rx = _Received(self.limit if _needs_text(step) else 2 * STEP_KEEP)
        try:
            self._execute(sid, index, step, sr, rx, t0)
        except (_StepProblem, PatternError) as problem:
            # a pattern that is invalid with its variables, or that backtracks past its time
            # limit: the step fails; a command still running is interrupted
            sr.message = (problem.message if isinstance(problem, _StepProblem)
                          else _one_line(problem, self.host))
            res = self.m.read(sid, owner=self.owner, wait=0)
            rx.add(res.output, res.truncated)
            if res.running:
                sr.message += "; interrupted the command (Ctrl-C)"
                res = self._interrupt(sid, rx)
            if res.running or not sr.output:
                self._show(sr, sid, rx)
                sr.exit_status = res.exit_status
                sr.duration = round(time.monotonic() - t0, 4)
        except (PolicyError, SecretError) as err:
            # refused before it was sent (policy), or while it runs (an answer's secret is
            # unset, a typed answer is refused): then interrupt it so the session stays usable
            sr.message = _one_line(err, self.host)
            if rx.reads:                          # the command was sent
                res = self._interrupt(sid, rx, if_running=True)
                self._show(sr, sid, rx)
                sr.exit_status = res.exit_status
            sr.duration = round(time.monotonic() - t0, 4)
        if sr.message is None:
            sr.status = "passed"
        return sr

    def _sub(self, index: int, text: str, *, regex: bool = False) -> str:
        try:
            return substitute(text, self.values, regex=regex)
        except KeyError as exc:
            raise _StepProblem(self._missing(index, str(exc.args[0]))) from None
        except ValueError as exc:
            raise _StepProblem(f"cannot substitute variables: {exc}") from None

    def _search(self, index: int, pattern: str, output: str, *, what: str = "pattern",
                substitute: bool = True) -> Any:
        """A match of the step's pattern in ``output`` (``^``/``$`` at each line), or None.

        Matched with a time limit (:mod:`.patterns`): a pattern that backtracks for ever
        fails this step instead of hanging the run past its step_timeout.
        """
        regex = self._sub(index, pattern, regex=True) if substitute else pattern
        try:
            return compile_safe(regex, what=what, flags=MULTILINE).search(output)
        except PatternError as exc:
            if regex != pattern and not isinstance(exc, PatternTimeoutError):
                raise _StepProblem(f"{pattern!r} with the variables substituted is not a valid "
                                   f"regular expression ({exc.detail})") from None
            raise _StepProblem(_one_line(exc, self.host)) from None

    def _missing(self, index: int, name: str) -> str:
        """Why ``name`` has no value at step ``index`` (check() already caught the rest)."""
        earlier = [j for j, s in enumerate(self.wf.spec.steps[:index - 1], 1)
                   if s.capture is not None and s.capture.name == name]
        if earlier:
            j = earlier[-1]
            status = self.result.steps[j - 1].status if j <= len(self.result.steps) else "failed"
            return f"variable '{name}' was not captured (step {j} {status})"
        return f"variable '{name}' is not defined"

    def _interrupt(self, sid: str, rx: _Received, *, if_running: bool = False) -> Any:
        """Ctrl-C the running command; its output so far goes to ``rx``."""
        res = self.m.read(sid, owner=self.owner, wait=0)
        rx.add(res.output, res.truncated)
        if if_running and not res.running:
            return res
        # A Ctrl-C can land in a program's own window (sudo switching its terminal to read a
        # password loses it about a third of the time): press it again until the prompt is back.
        deadline = time.monotonic() + INTERRUPT_WAIT
        while True:
            self.m.send(sid, control="c", newline=False, owner=self.owner)
            res = self.m.read(sid, owner=self.owner,
                              wait=max(0.0, min(INTERRUPT_REPEAT, deadline - time.monotonic())))
            rx.add(res.output, res.truncated)
            if not res.running or time.monotonic() >= deadline:
                return res

    def _copy(self, index: int, step: StepSpec, sr: StepResult, t0: float) -> str:
        kind, spec = step.copy  # type: ignore[misc]
        src, dest = self._sub(index, spec.src), self._sub(index, spec.dest)
        op = self.m.upload if kind == "upload" else self.m.download
        try:
            res = op(self.host, src, dest, actor=f"workflow:{self.wf.name}", confirm=step.confirm,
                     resume=spec.resume)
        except PolicyError:
            raise
        except PhonehomeJumpError as err:
            if isinstance(err, SessionDeadError):
                raise
            raise _StepProblem(_one_line(err, self.host)) from None
        sr.exit_status, sr.duration = 0, round(time.monotonic() - t0, 4)
        return (f"{kind}ed {res.bytes} bytes {res.local} {'->' if kind == 'upload' else '<-'} "
                f"{res.remote} sha256 {res.sha256}\n")

    def _execute(self, sid: str, index: int, step: StepSpec, sr: StepResult, rx: _Received,
                 t0: float) -> None:
        command = sr.command
        if step.copy is not None:
            output = self._copy(index, step, sr, t0)
            sr.output, sr.truncated, sr.omitted = _bounded(output)
            if (why := self._asserts(index, step, output)) is not None:
                sr.message = why
            elif step.capture is not None:
                self._capture(index, step, sr, output)
            return
        timeout = step.timeout or self.wf.spec.step_timeout
        if step.config:
            self._config(sid, step, sr, timeout, t0)
            return
        deadline = t0 + timeout
        answers = list(step.answer)

        def until() -> str | None:
            return answers[0].prompt if answers else None

        # waits in short slices, so a cancelled run (Ctrl-C) stops within one of them
        res = self.m.command(sid, command, owner=self.owner, wait=min(timeout, POLL),
                             until=until(), confirm=step.confirm)
        while True:
            rx.add(res.output, res.truncated)
            if not res.running:
                break
            # judged on the output since the last answer, not one read's piece of it (the
            # waits are short slices, so a prompt may arrive split over two reads); only its
            # newest PROMPT_WINDOW characters: a prompt ends the output that asks for input
            since = rx.since_answer()
            if answers and self._search(index, answers[0].prompt, since, what="answer "
                                        "prompt", substitute=False):
                ans = answers.pop(0)
                value, secret = _resolve_answer(ans, self.m.inventory, self.host)
                self.m.send(sid, value, owner=self.owner, secret=secret)
                rx.answered()
            elif (asking := res.awaiting_input or awaiting_input(since[-256:])) \
                    or time.monotonic() >= deadline or self.cancel.is_set():
                why = ("was cancelled" if self.cancel.is_set() else
                       f"waits for input no answer matches: {_last_line(rx.tail)!r}"
                       if asking else f"was still running after {timeout:g}s")
                sr.message = f"the command {why}; interrupted it (Ctrl-C)"
                res = self._interrupt(sid, rx)
                self._show(sr, sid, rx)
                sr.duration = round(time.monotonic() - t0, 4)
                sr.exit_status = res.exit_status
                return
            res = self.m.read(sid, owner=self.owner,
                              wait=min(POLL, max(0.0, deadline - time.monotonic())), until=until())
        needs = _needs_text(step)
        output = self._whole(sid, rx, res.total if needs else None)
        if output is None:
            self._show(sr, sid, rx)
        else:
            sr.output, sr.truncated, sr.omitted = _bounded(output)
        sr.exit_status = res.exit_status
        sr.duration = round(time.monotonic() - t0, 4)
        rows: list[dict[str, Any]] | None = None
        self._parse_problem = ""
        if answers:
            sr.message = f"prompt {answers[0].prompt!r} never appeared"
        elif (why := _expected(step, res.exit_status)) is not None:
            sr.message = why
        elif res.error_detected and step.expect_exit != "any":
            sr.message = f"the device reported an error: {res.error}"
        elif output is None and needs:
            sr.message = self._too_large(index, sr, step, res.total)
        elif step.parse and (rows := self._parse(command, output)) is None:
            sr.message = self._parse_problem
        elif (why := self._asserts(index, step, output, rows)) is not None:
            sr.message = why
        elif step.capture is not None and step.capture.field is not None:
            row = rows[0] if rows else None
            if row is None or step.capture.field not in row:
                sr.message = (f"capture {step.capture.name}: no parsed field "
                              f"{step.capture.field!r}" + (f" (fields: {', '.join(row)})" if row else
                                                           " (no rows)"))
            else:
                v = row[step.capture.field]
                value = ",".join(map(str, v)) if isinstance(v, list) else str(v)
                self.values[step.capture.name] = sr.captured[step.capture.name] = value
        elif step.capture is not None:
            assert output is not None
            self._capture(index, step, sr, output)
        sr.parsed = rows

    # -- a step's output: bounded in the result; whole only for what needs it, if it fits
    def _whole(self, sid: str, rx: _Received, total: int | None) -> str | None:
        """The finished command's whole output, or None when it is not kept and either not
        needed (``total`` None) or longer than :attr:`limit` (it is then never joined)."""
        if rx.kept:                  # every read was all of its part: exactly what they said
            return rx.text()
        if total is None or total > self.limit:
            return None
        return _all_output(self.m, sid, self.owner)   # read by pages, not head + tail

    def _show(self, sr: StepResult, sid: str, rx: _Received) -> None:
        """``sr.output``: the received text while it is kept, else head and tail read from the
        session by offset (exact offsets; the middle is never read)."""
        if rx.kept:
            sr.output, sr.truncated, sr.omitted = _bounded(rx.text())
            return
        total = self.m.read(sid, owner=self.owner, offset=0).total
        if total <= 2 * STEP_KEEP:
            sr.output, sr.truncated, sr.omitted = self._range(sid, 0, total), False, None
            return
        omitted = (STEP_KEEP, total - STEP_KEEP)
        sr.output = (self._range(sid, 0, STEP_KEEP) + omission(*omitted)
                     + self._range(sid, total - STEP_KEEP, total))
        sr.truncated, sr.omitted = True, omitted

    def _range(self, sid: str, a: int, b: int) -> str:
        """Characters ``[a, b)`` of the command's output, page by page."""
        return "".join(pages(lambda o: self.m.read(sid, owner=self.owner, offset=o), a, b))

    def _too_large(self, index: int, sr: StepResult, step: StepSpec, total: int) -> str:
        uses = ", ".join(k for k, on in (("assert", step.assert_ is not None),
                                         ("capture", step.capture is not None),
                                         ("parse", step.parse)) if on)
        return (f"step {index} ({sr.name}): its output is {total:,} characters, more than "
                f"output_memory ({self.limit:,}); {uses} would need all of it in memory, so "
                f"the step was not checked (try: filter the output on the host, e.g. "
                f"`... | grep PATTERN` or `... | tail -n 100`, or raise output_memory / "
                f"${ENV_MEMORY})")

    def _capture(self, index: int, step: StepSpec, sr: StepResult, output: str) -> None:
        assert step.capture is not None
        if step.capture.regex is None:
            value: str | None = output.rstrip("\n")
        else:
            m = self._search(index, step.capture.regex, output)
            value = None if m is None else (m.group(1) if m.re.groups else m.group(0))
        if value is None:
            sr.message = f"capture {step.capture.name}: {step.capture.regex!r} did not match"
        else:
            self.values[step.capture.name] = sr.captured[step.capture.name] = value

    def _asserts(self, index: int, step: StepSpec, output: str,
                 rows: list[dict[str, Any]] | None = None) -> str | None:
        a = step.assert_
        if a is None:
            return None
        if a.regex and not self._search(index, a.regex, output):
            return f"assert: {a.regex!r} does not match the output"
        if a.not_regex and (m := self._search(index, a.not_regex, output)):
            return f"assert: not_regex {a.not_regex!r} matches {m.group(0)[:80]!r}"
        if a.row and not any(self._row_matches(index, a.row, r) for r in rows or []):
            return f"assert: no parsed row matches {a.row}"
        if a.no_row and (hit := next((r for r in rows or [] if self._row_matches(index, a.no_row, r)),
                                     None)) is not None:
            return f"assert: a parsed row matches no_row {a.no_row}: {hit}"
        return None

    def _row_matches(self, index: int, want: dict[str, str], row: dict[str, Any]) -> bool:
        for name, pattern in want.items():
            if name not in row:
                raise _StepProblem(f"assert: the parsed rows have no field {name!r} "
                                   f"(fields: {', '.join(row)})")
            v = row[name]
            text = ",".join(map(str, v)) if isinstance(v, list) else str(v)
            if not self._search(index, pattern, text):
                return False
        return True

    def _parse(self, command: str, output: str) -> list[dict[str, Any]] | None:
        from .parsing import parse_text
        target = self.m.inventory.target(self.host)
        try:
            return parse_text(target.device_type, command, output, host=self.host)[1]
        except PhonehomeJumpError as err:
            self._parse_problem = f"parse: {err.what}"
            return None

    def _config(self, sid: str, step: StepSpec, sr: StepResult, timeout: float, t0: float) -> None:
        """A config step: the lines of ``run`` applied in configuration mode (modes.apply_config)."""
        from .modes import apply_config
        target = self.m.inventory.target(self.host)
        info = next((i for i in self.m.list(owner=self.owner) if i.id == sid), None)
        c = apply_config(self.m, sid, target, sr.command.splitlines(), owner=self.owner,
                         commit=step.commit, wait=timeout, confirm=step.confirm,
                         mode=getattr(info, "mode", None))
        sr.output, sr.truncated, sr.omitted = _bounded(
            "".join(f"{x.line}\n{x.output}" for x in c.lines))
        sr.duration = round(time.monotonic() - t0, 4)
        if c.error_detected:
            sr.message = (f"the device rejected {c.error}" +
                          (f"; not sent: {len(c.not_sent)} line(s)" if c.not_sent else "") +
                          ("; the candidate was rolled back" if c.rolled_back else ""))


class _StepProblem(Exception):
    """A mistake in one step (not the session's): the step fails with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _one_line(err: PhonehomeJumpError, host: str) -> str:
    """``where: what (try: hint)`` on one line, for a step's message (the host is known)."""
    text = f"{err.where}: {err.what}" if err.where and err.where != f"host {host!r}" else err.what
    return text + (f" (try: {err.hint})" if err.hint else "")


class _Received:
    """A step's output as its reads deliver it: bounded memory, linear in the output.

    The pieces are kept only while they are the whole output (no read came back as head and
    tail) and fit ``limit``: then they are exactly the step's output, as they always were. The
    newest PROMPT_WINDOW characters stay for the answer prompts, with how many of them came
    after the last answer.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: list[str] = []
        self.size = 0                # characters in pieces
        self.kept = True             # pieces are the whole output
        self.tail = ""               # the newest PROMPT_WINDOW characters received
        self.since = 0               # characters received since the last answer
        self.reads = 0

    def add(self, text: str, truncated: bool = False) -> None:
        self.reads += 1
        if self.kept and (truncated or self.size + len(text) > self.limit):
            self.kept, self.pieces, self.size = False, [], 0   # the session has it all
        if not text:
            return
        if self.kept:
            self.pieces.append(text)
            self.size += len(text)
        self.tail = (self.tail + text)[-PROMPT_WINDOW:]
        self.since += len(text)

    def answered(self) -> None:
        self.since = 0

    def since_answer(self) -> str:
        """The text since the last answer, at most its newest PROMPT_WINDOW characters."""
        n = min(self.since, len(self.tail))
        text = self.tail[len(self.tail) - n:] if n else ""
        if self.since > n and (nl := text.find("\n")) >= 0:
            text = text[nl + 1:]     # cut mid-line: start at a line, so ^ matches only there
        return text

    def text(self) -> str:
        return "".join(self.pieces)


def _needs_text(step: StepSpec) -> bool:
    """The step looks into its output (else only the bounded view and the exit status)."""
    return step.assert_ is not None or step.capture is not None or step.parse


def _bounded(text: str) -> tuple[str, bool, tuple[int, int] | None]:
    """(output, truncated, omitted): ``text``, or its STEP_KEEP head and tail around a marker."""
    if len(text) <= 2 * STEP_KEEP:
        return text, False, None
    omitted = (STEP_KEEP, len(text) - STEP_KEEP)
    return text[:STEP_KEEP] + omission(*omitted) + text[-STEP_KEEP:], True, omitted


def _last_line(text: str) -> str:
    lines = text.rstrip().splitlines()
    return lines[-1].strip()[-80:] if lines else ""


def _all_output(m: SessionManager, sid: str, owner: str | None) -> str:
    return "".join(pages(lambda o: m.read(sid, owner=owner, offset=o)))


def run_workflow(wf: Workflow, inventory: Inventory | None = None, *,
                 manager: SessionManager | None = None, hosts: Sequence[str] | None = None,
                 vars: Mapping[str, str] | None = None, concurrency: int | None = None,
                 on_event: Callable[[Event], None] | None = None,
                 cancel: threading.Event | None = None, owner: str | None = None,
                 result: RunResult | None = None, audit_path: str | None = None) -> RunResult:
    """Run ``wf`` on its targets (or ``hosts`` of them); returns when every host is done.

    Give an ``inventory`` (a manager is made and shut down here) or a running ``manager``
    (its sessions are opened with ``owner`` and closed per host). ``result`` lets a caller
    watch the run fill in from another thread (the MCP server does).
    """
    if manager is None and inventory is None:
        raise ValueError("give an inventory or a manager")
    inv = manager.inventory if manager is not None else inventory
    assert inv is not None
    names = wf.check(inv, hosts=hosts, vars=vars)
    cancel = cancel or threading.Event()
    emit = on_event or (lambda e: None)
    width = min(concurrency or wf.spec.concurrency, len(names)) or 1
    own = manager is None
    m = manager or SessionManager(inv, max_sessions=max(100, width), audit_path=audit_path,
                                  actor=f"workflow:{wf.name}")
    result = result or RunResult(wf.name, wf.file, time.time(), {})
    for n in names:
        result.hosts.setdefault(n, HostResult(n, "pending"))
    t0 = time.monotonic()
    lock = threading.Lock()

    def safe_emit(e: Event) -> None:
        with lock:                    # progress displays need not be thread-safe
            try:
                emit(e)
            except Exception:         # a broken display must not fail the run
                log.exception("workflow progress callback")

    def one(name: str) -> HostResult:
        values = {**wf.spec.vars, **(vars or {}), "host": name, "workflow": wf.name}
        return _HostRun(wf, m, name, values, safe_emit, cancel, owner, result.hosts[name]).run()

    try:
        with concurrent.futures.ThreadPoolExecutor(width, thread_name_prefix="phj-wf") as pool:
            futures = [pool.submit(one, n) for n in names]
            try:
                for f in futures:
                    f.result()
            except BaseException:     # Ctrl-C: let the hosts stop between steps
                cancel.set()
                raise
    finally:
        if own:
            m.shutdown()
        result.duration = round(time.monotonic() - t0, 4)
        result.finished = True
    return result


# --------------------------------------------------------------------------- lock

def state_dir() -> Path:
    base = os.environ.get(STATE_ENV) or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "phonehome-jump")
    return Path(base)


class WorkflowLock:
    """An flock(2) lock per workflow *name*, so a scheduled run never overlaps the previous one.

    The lock file is ``<state dir>/locks/<name>.lock`` (state dir: $PHONEHOME_JUMP_STATE, else
    $XDG_STATE_HOME/phonehome-jump, else ~/.local/state/phonehome-jump; a name with
    characters other than letters, digits, ``_.-`` gets them replaced and a hash of the name
    appended). Two runs exclude each other when they use the **same state directory** and a
    workflow of the **same name**, whichever file it was loaded from: for the CLI under a
    scheduler and an MCP server (which may run as other users) to share it, give both the
    same $PHONEHOME_JUMP_STATE. If the state directory grants its group access, the
    ``locks`` directory and the lock files are made group-accessible too, so users of that
    group share the locks; otherwise they are private (0700/0600).

    The kernel drops the lock when the process ends, so a crashed run never leaves a stale
    lock; the file keeps the holder's pid, host and start time for the message others get.
    """

    def __init__(self, wf: Workflow, directory: Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", wf.name)[:60]
        if safe != wf.name:       # keep distinct names distinct
            safe += "-" + hashlib.sha256(wf.name.encode()).hexdigest()[:8]
        self.path = (directory or state_dir() / "locks") / f"{safe}.lock"
        self.wf = wf
        self._fd: int | None = None

    def _open(self) -> int:
        locks = self.path.parent
        if not locks.is_dir():
            try:              # the state dir's group access (and setgid) carry over
                group = locks.parent.stat().st_mode & (0o070 | stat.S_ISGID)
            except OSError:
                group = 0
            locks.mkdir(parents=True, exist_ok=True, mode=0o700)
            if group:
                try:
                    os.chmod(locks, 0o700 | group)      # past the umask
                except OSError:
                    pass
        shared = locks.stat().st_mode & 0o030 == 0o030          # group may create files
        mode = 0o660 if shared else 0o600
        flags = os.O_RDWR | os.O_NOFOLLOW      # a shared directory: never follow a symlink
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            return os.open(self.path, flags)
        if shared:
            os.fchmod(fd, mode)                                  # past the umask
        return fd

    def acquire(self, what: str = "workflow run") -> WorkflowLock:
        try:
            fd = self._open()
        except OSError as exc:
            raise WorkflowLockedError(f"cannot create the lock file {self.path}: {exc.strerror}",
                                      where=f"workflow {self.wf.name!r}",
                                      hint=f"set {STATE_ENV} to a directory this user can "
                                           "write (shared with the other runs of this "
                                           "workflow)") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            os.close(fd)
            since = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
                     if "since" in holder else "?")
            raise WorkflowLockedError(
                f"another run holds the lock: pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} ({holder.get('what', 'a run')}) since {since}",
                where=f"workflow {self.wf.name!r} ({self.wf.file})",
                hint=f"wait for it to finish; the lock is {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.time(), "what": what}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkflowLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- reports

def junit_xml(result: RunResult) -> str:
    """JUnit XML: one testsuite per host, one testcase per step (for CI dashboards)."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name=result.workflow,
                      tests=str(sum(len(h.steps) for h in result.hosts.values())),
                      failures=str(sum(s.status == "failed" for h in result.hosts.values()
                                       for s in h.steps)),
                      errors=str(sum(1 for h in result.hosts.values() if h.error)),
                      time=f"{result.duration:.3f}")
    for host, hr in result.hosts.items():
        suite = ET.SubElement(
            root, "testsuite", name=f"{result.workflow}.{host}", hostname=host,
            tests=str(len(hr.steps)), failures=str(sum(s.status == "failed" for s in hr.steps)),
            errors=str(int(hr.error is not None)),
            skipped=str(sum(s.status == "skipped" for s in hr.steps)), time=f"{hr.duration:.3f}",
            timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(result.started)))
        if hr.error:     # before any step ran: it could not connect; else the session died
            opened = any(s.status != "skipped" for s in hr.steps)
            case = ET.SubElement(suite, "testcase", classname=f"{result.workflow}.{host}",
                                 name="session" if opened else "connect", time="0")
            ET.SubElement(case, "error", message=hr.error.splitlines()[0]).text = hr.error
        for s in hr.steps:
            case = ET.SubElement(suite, "testcase", classname=f"{result.workflow}.{host}",
                                 name=f"{s.index:02d} {s.name}", time=f"{s.duration:.3f}")
            if s.status == "failed":
                ET.SubElement(case, "failure", message=_xml_text(s.message or "failed")).text = \
                    _xml_text(s.output)
            elif s.status == "skipped":
                ET.SubElement(case, "skipped", message=s.message or "skipped")
            if s.output and s.status != "failed":
                ET.SubElement(case, "system-out").text = _xml_text(s.output)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    """XML 1.0 cannot carry most control characters (a terminal's output can): show them."""
    return _XML_BAD.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
