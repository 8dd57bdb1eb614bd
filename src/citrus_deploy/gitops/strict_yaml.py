"""The YAML a fleet file may use: mappings, lists and plain values, nothing else.

A stack file is a few keys under `config:`, so everything else YAML can do is refused before a
value is built: anchors and aliases (a 443-byte "billion laughs" file expanded to 1.4 GB),
`<<:` merge keys, a key given twice (a second `config:` block silently replaced the first),
explicit tags (`!!binary`, `!!set`, `!foo`), unquoted dates, keys that are not strings, and
nesting deeper than a stack file needs. Parsing and composing are PyYAML's C code; the node
tree is then walked once, here, to check it and build the values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

# root mapping > config > a key's value > a list item or `secure:` > one level of slack
MAX_DEPTH = 5
# Each kind of problem is reported once, where it first occurs, with how many more there are;
# a file this broken is not worth more kinds.
MAX_PROBLEMS = 20

_CORE = "tag:yaml.org,2002:"
_STR, _SEQ, _MAP = f"{_CORE}str", f"{_CORE}seq", f"{_CORE}map"
_SCALARS = {
    f"{_CORE}{name}": getattr(SafeConstructor, f"construct_yaml_{name}")
    for name in ("int", "float", "bool", "null")
}
# construct_yaml_* read only the node; no state of a constructor instance is involved.
_CONSTRUCTOR = SafeConstructor()

ALIAS_RULE = (
    "YAML anchors and aliases (&name, *name) are not allowed in a fleet file: write each value out"
)
MERGE_RULE = "`<<` merge keys are not allowed in a fleet file: write every key out"
DATE_RULE = "an unquoted date or time: quote it (a fleet file holds strings, not dates)"
KEY_RULE = "a key must be a string"
VALUE_RULE = "a plain `=` is YAML's value key: quote it"
DEPTH_RULE = f"nested deeper than {MAX_DEPTH} levels: a fleet file is a few keys under `config:`"


def tag_rule(tag: str) -> str:
    shown = f"!!{tag.removeprefix(_CORE)}" if tag.startswith(_CORE) else "a custom tag"
    return (
        f"YAML tags ({shown}) are not allowed in a fleet file: write a plain value, quoted if "
        "need be"
    )


def twice_rule(first_line: int) -> str:
    return f"given more than once (first on line {first_line}): a key may appear once"


@dataclass(frozen=True)
class Problem:
    """What is wrong where: `line` 1-based (None: the file), `key` the nearest key, if any."""

    line: int | None
    key: str | None
    rule: str


class _Found:
    """The problems of one file: the first of each rule, and how often each occurred."""

    def __init__(self) -> None:
        self.first: dict[str, Problem] = {}
        self.count: Counter[str] = Counter()

    def add(self, line: int | None, key: str | None, rule: str) -> None:
        self.count[rule] += 1
        if rule not in self.first and len(self.first) < MAX_PROBLEMS:
            self.first[rule] = Problem(line, key, rule)

    def problems(self) -> list[Problem]:
        found = []
        for rule, first in self.first.items():
            more = self.count[rule] - 1
            if more:
                rule = f"{rule} (and {more} more like it in this file)"
            found.append(Problem(first.line, first.key, rule))
        return found


class Refused(Exception):
    """The file uses YAML a fleet file may not; `problems` says what and where."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


@dataclass(frozen=True)
class Document:
    """The file's value (None: no document at all) and its node tree, for line numbers."""

    value: Any
    root: yaml.Node | None


def load(text: str) -> Document:
    """Parses one document. yaml.YAMLError when it is not YAML; Refused when it is YAML a fleet
    file may not use. Time and memory are linear in the length of `text`."""
    # Anchors, aliases and tags cannot be seen in the node tree (an alias is the same node
    # object again, a tag is resolved), so the events are read for them; only a file holding
    # one of their characters can have one, which keeps the common file to one pass.
    if "&" in text or "*" in text or "!" in text:
        found = _events_problems(text)
        if found.count:
            raise Refused(found.problems())
    root = yaml.compose(text, Loader=yaml.CSafeLoader)
    if root is None:
        return Document(None, None)
    builder = _Builder()
    value = builder.build(root, 0, None)
    if builder.found.count:
        raise Refused(builder.found.problems())
    return Document(value, root)


@dataclass
class _Open:
    """A collection open in the event stream, to name the key of a problem in it."""

    mapping: bool
    is_key: bool  # this collection is itself a key (`? [a, b]: c`)
    expect_key: bool = True
    key: str | None = None


def _events_problems(text: str) -> _Found:
    found = _Found()
    stack: list[_Open] = []
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.CollectionEndEvent):
            if not stack.pop().is_key:
                _value_ended(stack)
            continue
        if not isinstance(event, yaml.NodeEvent):
            continue  # stream and document events
        is_key = bool(stack) and stack[-1].mapping and stack[-1].expect_key
        if is_key:
            stack[-1].expect_key = False
            if isinstance(event, yaml.ScalarEvent):
                stack[-1].key = event.value
        key = next((o.key for o in reversed(stack) if o.key is not None), None)
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        tag = getattr(event, "tag", None)  # scalars and collection starts have one
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            found.add(line, key, ALIAS_RULE)
        elif tag is not None:
            found.add(line, key, tag_rule(str(tag)))
        if isinstance(event, yaml.CollectionStartEvent):
            stack.append(_Open(isinstance(event, yaml.MappingStartEvent), is_key))
        elif not is_key:
            _value_ended(stack)
    return found


def _value_ended(stack: list[_Open]) -> None:
    """In a mapping, the node after a value is a key."""
    if stack and stack[-1].mapping:
        stack[-1].expect_key = True


class _Builder:
    """Checks each node and builds its value, collecting problems instead of raising."""

    def __init__(self) -> None:
        self.found = _Found()

    def problem(self, node: yaml.Node, key: str | None, rule: str) -> None:
        self.found.add(node.start_mark.line + 1, key, rule)

    def build(self, node: yaml.Node, depth: int, key: str | None) -> Any:
        if depth > MAX_DEPTH:
            self.problem(node, key, DEPTH_RULE)
            return None
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, key)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                self.problem(node, key, tag_rule(node.tag))
                return None
            return [self.build(item, depth + 1, key) for item in node.value]
        assert isinstance(node, yaml.MappingNode)
        if node.tag != _MAP:
            self.problem(node, key, tag_rule(node.tag))
            return None
        built: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            name = self.key(key_node, key)
            if name is None:
                continue
            line = key_node.start_mark.line + 1
            if name in lines:
                self.problem(key_node, name, twice_rule(lines[name]))
                continue
            lines[name] = line
            built[name] = self.build(value_node, depth + 1, name)
        return built

    def key(self, node: yaml.Node, parent: str | None) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, parent, KEY_RULE)
        elif node.tag == f"{_CORE}merge":
            self.problem(node, "<<", MERGE_RULE)
        else:  # 1:, true:, null:, a date
            self.problem(node, str(node.value), f"{KEY_RULE}: quote it")
        return None

    def scalar(self, node: yaml.ScalarNode, key: str | None) -> Any:
        if node.tag == _STR:
            return node.value
        construct = _SCALARS.get(node.tag)
        if construct is not None:
            return construct(_CONSTRUCTOR, node)
        if node.tag == f"{_CORE}timestamp":
            self.problem(node, key, DATE_RULE)
        elif node.tag == f"{_CORE}merge":
            self.problem(node, key, MERGE_RULE)
        elif node.tag == f"{_CORE}value":
            self.problem(node, key, VALUE_RULE)
        else:  # a tag the events would have shown
            self.problem(node, key, tag_rule(node.tag))
        return None
