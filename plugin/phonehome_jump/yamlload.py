"""YAML for the files users write (inventory, workflows): with lines, and with limits.

:func:`parse_yaml` builds plain data from PyYAML's node tree itself, so it records the line of
every key and list item (for ``file:line`` messages) and catches duplicate keys, which PyYAML
otherwise silently resolves to the last value. It also refuses what would freeze or exhaust the
process instead of loading it:

* a file larger than :data:`MAX_YAML_BYTES`, or with more than :data:`MAX_YAML_VALUES` values
  written in it (checked while parsing, so a huge file stops early: pure-Python YAML parses
  about 20,000 values a second on a busy machine);
* alias bombs: aliases (``*name``) that expand to more than
  ``MIN_EXPANSION + EXPANSION_FACTOR × (values written in the file)`` values (nine nested lists of
  nine aliases is 387 million values from 263 bytes); ordinary reuse, such as a ``<<: *defaults``
  merge on every host, stays far below that;
* recursive aliases (``x: &a [*a]``, ``a: &a {<<: *a}``): a value cannot contain itself;
* nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_VALUES", "MAX_DEPTH", "KeyPath", "YamlProblem", "parse_yaml",
           "within_memory"]

MAX_YAML_BYTES = 4 * 1024 * 1024     # one inventory or workflow file
MAX_YAML_VALUES = 250_000            # keys, values and items written in one file
MAX_DEPTH = 100                      # nested mappings/lists
MIN_EXPANSION = 100_000              # values built from aliases, at least ...
EXPANSION_FACTOR = 10                # ... and this many per value written in the file

_MERGE = "tag:yaml.org,2002:merge"
KeyPath = tuple[str | int, ...]
T = TypeVar("T")


class YamlProblem(Exception):
    """The file cannot be loaded at all: ``line`` (1-based, or None) and ``what``."""

    def __init__(self, line: int | None, what: str) -> None:
        super().__init__(what)
        self.line, self.what = line, what


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that walks the node tree itself (lines, duplicate keys, alias limits)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[tuple[int, str]] = []
        self.written = 0                                   # nodes as written (not aliases)
        self.built = 0                                     # values built (aliases expanded)
        self.uses: dict[tuple[int, Any], tuple[int, str]] = {}   # (parent, index) -> alias use
        self._open: set[int] = set()                       # nodes being built (recursion)
        self._expanding: list[tuple[int, str]] = []        # alias uses being expanded
        self._depth = 0                                    # nesting while composing
        self.limit = MIN_EXPANSION

    # -- composing: count what is written, remember where each alias is used
    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if parent is not None:
                key = index if isinstance(index, int) else id(index)
                self.uses[(id(parent), key)] = (event.start_mark.line + 1, str(event.anchor))
            return node
        self.written += 1
        if self.written > MAX_YAML_VALUES:
            mark = self.peek_event().start_mark
            raise YamlProblem(mark.line + 1, f"more than {MAX_YAML_VALUES} values in one file; "
                              "split it into several files of a directory")
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YamlProblem(mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1        # not in a `finally` (see _guarded): a failure ends the loader
        return node

    def build(self) -> Any:
        node = self.get_single_node()
        self.limit = MIN_EXPANSION + EXPANSION_FACTOR * self.written
        return None if node is None else self._walk(node, (), None, None)

    # -- building
    def _pairs(self, node: yaml.MappingNode,
               seen: frozenset[int] = frozenset()) -> list[tuple[yaml.Node, yaml.Node, bool, Any]]:
        """Own pairs first, then `<<: *anchor` pairs (own keys win, as in YAML).

        Each pair carries the mapping it was written in (where an alias in it is recorded).
        """
        seen = seen | {id(node)}
        pairs = [(k, v, False, node) for k, v in node.value if k.tag != _MERGE]
        for k, v in node.value:
            if k.tag != _MERGE:
                continue
            for src in v.value if isinstance(v, yaml.SequenceNode) else [v]:
                if not isinstance(src, yaml.MappingNode):
                    self.problems.append((k.start_mark.line + 1, "'<<' must merge a mapping"))
                elif id(src) in seen or id(src) in self._open:
                    raise YamlProblem(k.start_mark.line + 1, "recursive alias: '<<' merges a "
                                      "mapping into itself; a value cannot contain itself")
                else:
                    pairs += [(kk, vv, True, p) for kk, vv, _, p in self._pairs(src, seen)]
        return pairs

    def _walk(self, node: yaml.Node, path: KeyPath, parent: Any, index: Any) -> Any:
        use = self.uses.get((id(parent), index)) if parent is not None else None
        if use is not None:
            self._expanding.append(use)
        try:
            return self._build(node, path, use)
        finally:
            if use is not None:
                self._expanding.pop()

    def _build(self, node: yaml.Node, path: KeyPath, use: tuple[int, str] | None) -> Any:
        self.built += 1
        if self.built > self.limit:
            line, anchor = self._expanding[0] if self._expanding else (
                node.start_mark.line + 1, "")
            what = (f"alias *{anchor} expands to more than {self.limit} values (an alias "
                    "bomb?); YAML aliases may repeat a value, not multiply it"
                    if anchor else f"more than {self.limit} values")
            raise YamlProblem(line, what)
        if id(node) in self._open:
            line, anchor = use or (node.start_mark.line + 1, "?")
            raise YamlProblem(line, f"recursive alias *{anchor}: a value cannot contain itself")
        if isinstance(node, yaml.MappingNode):
            return self._inside(node, lambda: self._mapping(node, path))
        if isinstance(node, yaml.SequenceNode):
            return self._inside(node, lambda: self._sequence(node, path))
        return self.construct_object(node, deep=True)

    def _inside(self, node: yaml.Node, build: Callable[[], Any]) -> Any:
        """Build a collection while it is open: an alias to it from inside is recursion."""
        self._open.add(id(node))
        try:                    # a short function: see _guarded
            return build()
        finally:
            self._open.discard(id(node))

    def _sequence(self, node: yaml.SequenceNode, path: KeyPath) -> list[Any]:
        for i, item in enumerate(node.value):
            self.lines[path + (i,)] = item.start_mark.line + 1
        return [self._walk(item, path + (i,), node, i) for i, item in enumerate(node.value)]

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for knode, vnode, merged, owner in self._pairs(node):
            line = knode.start_mark.line + 1
            if not isinstance(knode, yaml.ScalarNode):
                self.problems.append((line, "keys must be plain names"))
                continue
            key = knode.value  # raw text: `on:` or `7750:` stay names, not bool/int
            if key in out:
                if not merged:
                    where = ".".join(map(str, path)) or "the top level"
                    self.problems.append((line, f"duplicate key '{key}' in {where} (first at "
                                                f"line {self.lines[path + (key,)]}); YAML "
                                                "would silently keep only the last one"))
                    self.lines[path + (key,)] = line  # YAML keeps the last value
                    out[key] = self._walk(vnode, path + (key,), owner, id(knode))
                continue
            self.lines[path + (key,)] = line
            out[key] = self._walk(vnode, path + (key,), owner, id(knode))
        return out


def too_big(size: int, limit: int | None = None) -> str | None:
    """Why a file of ``size`` bytes is refused, or None."""
    limit = MAX_YAML_BYTES if limit is None else limit
    if size <= limit:
        return None
    return (f"the file is {size} bytes; the limit is {limit} bytes ({limit / 2**20:g} MiB): "
            "split it into several files of a directory")


def read_text(path: Path, limit: int | None = None) -> str:
    """A user's file as UTF-8 text; YamlProblem if it is too big (checked before reading)."""
    limit = MAX_YAML_BYTES if limit is None else limit
    with path.open("rb") as f:
        why = too_big(os.fstat(f.fileno()).st_size, limit)
        data = f.read(limit + 1) if why is None else b""
    why = why or too_big(len(data), limit)     # grew while read, or not a regular file
    if why is not None:
        raise YamlProblem(None, why)
    return data.decode("utf-8")


def parse_yaml(text: str, limit: int | None = None) -> tuple[Any, dict[KeyPath, int],
                                                               list[tuple[int, str]]]:
    """``(data, lines, problems)`` of one YAML document.

    ``lines`` maps key paths to their line; ``problems`` are (line, what) found on the way
    (duplicate keys, bad merges). Raises :class:`YamlProblem` when the file cannot be loaded.
    """
    why = too_big(len(text.encode("utf-8", "surrogatepass")), limit)
    if why is not None:
        raise YamlProblem(None, why)
    loader = _LineLoader(text)
    data = _guarded(loader, text)
    loader.dispose()
    return data, loader.lines, loader.problems


def _guarded(loader: _LineLoader, text: str) -> Any:
    """The loaded data, or YamlProblem for what YAML itself refuses.

    CPython 3.11 can spin forever when memory runs out (gh-132508): re-raising from a
    `finally` or an unmatched `except` allocates an int for the handler's position, which
    past position 256 is not cached; when that allocation fails it retries the same handler.
    So on the loading path a MemoryError passes only handlers near the start of a function
    (this one, ``_inside``, ``_walk``): tests/unit/test_hostile_input.py checks it.
    """
    try:
        return loader.build()
    except yaml.reader.ReaderError as exc:  # raised before any mark exists
        raise _reader_problem(exc, text) from None
    except yaml.MarkedYAMLError as exc:
        raise _marked_problem(exc) from None
    except RecursionError:
        raise YamlProblem(None, "nested too deeply to load") from None


def within_memory(build: Callable[[], T]) -> T | None:
    """``build()``, or None when memory ran out (by then its half-built data is freed).

    For loading a user's file: the caller says so in an error of its own, outside any handler.
    Short on purpose (see _guarded): the handler sits at the start of the function.
    """
    try:
        return build()
    except MemoryError:
        return None


def _reader_problem(exc: yaml.reader.ReaderError, text: str) -> YamlProblem:
    line = text[:exc.position].count("\n") + 1
    return YamlProblem(line, f"invalid YAML: character #x{exc.character:04x} is not allowed")


def _marked_problem(exc: yaml.MarkedYAMLError) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    return YamlProblem(mark.line + 1 if mark else None, f"invalid YAML: {exc.problem or exc.context}")
