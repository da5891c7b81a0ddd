"""A strict, safe YAML loader for pipeline definitions: JSON's data model, nothing more.

- Safe construction only: no Python objects, no timestamps, sets, binaries or other tags; a
  document loads to the dicts, lists, strings, ints, floats, bools and nulls JSON has.
- The YAML 1.2 core schema for plain scalars, not PyYAML's YAML 1.1 default: `on`, `yes`, `no`,
  `off` stay strings (so `retry: {on: [failed]}` means what it says), `010` is ten, `1_000`,
  `0x10`, `12:30`, `2026-01-01`, `.inf` and `.nan` are strings.
- Duplicate keys are an error (YAML says keys are unique; PyYAML would silently keep the last).
- Keys are strings (a JSON object's are).
- Anchors and aliases are allowed (merge keys `<<` too), but what they repeat is counted: the
  document may grow by at most `MAX_ALIAS_NODES` values through them, and may nest at most
  `MAX_DEPTH` levels, so a "billion laughs" document is refused before anything is built from it.
  A recursive alias is refused.

Errors are `YamlError` with the 1-based line and column of the culprit.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

MAX_ALIAS_NODES = 100_000  # values aliases may add to a document, counting what they repeat
MAX_DEPTH = 32  # nesting levels (a pipeline definition needs about 6)

_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """A document refused: `problem` says why, `line` and `column` (1-based) say where, if known."""

    def __init__(self, problem: str, line: int | None = None, column: int | None = None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{problem}{where}")
        self.problem = problem
        self.line = line
        self.column = column


def _at(problem: str, node: Node) -> YamlError:
    mark = node.start_mark
    return YamlError(problem, mark.line + 1, mark.column + 1)


class _CoreResolver(BaseResolver):
    """YAML 1.2 core schema, without the hex/octal/inf/nan forms JSON cannot say either."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


_CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_CoreResolver.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_CoreResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)
_CoreResolver.add_implicit_resolver(_MERGE, re.compile(r"^<<$"), ["<"])


class _JsonConstructor(SafeConstructor):
    """Builds only JSON's values; any other tag (explicit `!!binary`, `!!timestamp`, `!foo`) is an error."""

    def construct_json_int(self, node: ScalarNode) -> int:
        text = str(self.construct_scalar(node))
        try:
            return int(text, 10)
        except ValueError:
            raise ConstructorError(None, None, f"{text[:80]!r} is not a decimal integer", node.start_mark) from None

    def construct_json_float(self, node: ScalarNode) -> float:
        text = str(self.construct_scalar(node))
        value = float(text)  # the resolver's pattern admits nothing float() refuses
        if math.isinf(value):
            raise ConstructorError(None, None, f"{text[:80]!r} is not a finite number", node.start_mark)
        return value

    yaml_constructors: ClassVar[dict[Any, Any]] = {
        "tag:yaml.org,2002:null": SafeConstructor.construct_yaml_null,
        "tag:yaml.org,2002:bool": SafeConstructor.construct_yaml_bool,
        "tag:yaml.org,2002:int": construct_json_int,
        "tag:yaml.org,2002:float": construct_json_float,
        _STR: SafeConstructor.construct_yaml_str,
        "tag:yaml.org,2002:seq": SafeConstructor.construct_yaml_seq,
        "tag:yaml.org,2002:map": SafeConstructor.construct_yaml_map,
        None: SafeConstructor.construct_undefined,
    }


# libyaml's parser when PyYAML was built with it (fast, and it bounds nesting itself); the pure
# Python one otherwise. Both hand their nodes to the resolver and constructor above.
if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _Loader(CParser, _JsonConstructor, _CoreResolver):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            _JsonConstructor.__init__(self)
            _CoreResolver.__init__(self)

else:  # pragma: no cover - PyYAML without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        yaml.composer.Composer,
        _JsonConstructor,
        _CoreResolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _JsonConstructor.__init__(self)
            _CoreResolver.__init__(self)


def _check(root: Node) -> None:
    """One pass over the composed node graph (before anything is constructed): keys are unique
    strings, no alias is recursive, nesting and what aliases repeat are bounded. Iterative, so a
    deep document cannot exhaust the stack; each node is visited once (sizes are memoised), so
    a document whose aliases expand exponentially costs what its text costs."""
    size: dict[int, int] = {}  # expanded size of each finished node, counting repeats
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if height[key] > MAX_DEPTH:
                raise _at(f"the document nests more than {MAX_DEPTH} levels deep", node)
            continue
        if key in size:
            continue
        if key in on_path:
            raise _at("a recursive alias (an anchor used inside itself)", node)
        if isinstance(node, MappingNode):
            _check_keys(node)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((kid, False) for kid in reversed(_children(node)) if id(kid) not in size)
    expanded, distinct = size[id(root)], len(size)
    if expanded - distinct > MAX_ALIAS_NODES:
        raise YamlError(
            f"anchors and aliases expand the document by {expanded - distinct} values, "
            f"over the limit of {MAX_ALIAS_NODES} (a 'billion laughs' document?)"
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_keys(node: MappingNode) -> None:
    seen: dict[str, Node] = {}
    for key_node, _value in node.value:
        if key_node.tag == _MERGE:
            continue
        if not isinstance(key_node, ScalarNode) or key_node.tag != _STR:
            raise _at("a key must be a string (quote it)", key_node)
        name = key_node.value
        if name in seen:
            first = seen[name].start_mark
            raise _at(f"duplicate key {name[:80]!r} (already at line {first.line + 1})", key_node)
        seen[name] = key_node


def load_yaml(text: str) -> Any:
    """The one document in `text` as JSON values; `YamlError` with line and column otherwise."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise YamlError("the document is empty")
        _check(root)
        return loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        if mark is None:
            raise YamlError(problem) from None
        raise YamlError(problem, mark.line + 1, mark.column + 1) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: at an offset
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise YamlError(f"character {exc.character!r} is not allowed in YAML", line, column) from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)[:200]) from None
    except RecursionError:  # the pure-Python parser on a deeply nested document
        raise YamlError(f"the document nests more than {MAX_DEPTH} levels deep") from None
    finally:
        loader.dispose()
