"""Bounded work per request: YAML without alias bombs, and size/depth limits on JSON values.

Limits (also in ``docs/security.md``):

* a config's text is at most :data:`MAX_CONFIG_BYTES`; YAML anchors/aliases are allowed, but the
  document as expanded (every alias counted as a copy) has at most :data:`MAX_NODES` nodes, so a
  572-byte "billion laughs" is refused while being parsed, not after it filled memory;
* a JSON field of a request (metadata, hparams, searcher actions) is at most
  :data:`MAX_JSON_BYTES`, nested at most :data:`MAX_DEPTH` deep, with integers of at most
  :data:`MAX_INT_DIGITS` digits;
* any value stored from a config or a request is nested at most :data:`MAX_DEPTH` deep and has at
  most :data:`MAX_NODES` nodes.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from determined_sdk.errors import InvalidArgumentError

MAX_CONFIG_BYTES = 1 << 20
MAX_JSON_BYTES = 4 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_INT_DIGITS = 100


def _expanded_size(root: yaml.Node, field: str) -> None:
    """Refuse a YAML node graph whose expansion is too big or too deep (aliases share nodes)."""
    memo: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    deep = InvalidArgumentError(f"{field}: nested more than {MAX_DEPTH} levels deep")

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise deep
        key = id(node)
        if key in memo:
            size, height = memo[key]
            if size < 0:
                raise InvalidArgumentError(f"{field}: a YAML alias refers to itself")
            if depth + height > MAX_DEPTH:
                raise deep
            return size, height
        memo[key] = (-1, 0)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        total, height = 1, 0
        for child in children:
            size, h = visit(child, depth + 1)
            total, height = total + size, max(height, h + 1)
            if total > MAX_NODES:
                raise InvalidArgumentError(
                    f"{field}: expands to more than {MAX_NODES} values (a YAML alias counts "
                    "once per use); refused"
                )
        memo[key] = (total, height)
        return total, height

    visit(root, 0)


# libyaml's parser (when PyYAML was built with it) parses ~6x faster than the pure-Python one,
# with the same constructors (same values). It refuses nesting deeper than 1,000 levels itself.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _BoundedLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that checks the composed document before constructing Python values."""

    field = "config"

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, self.field)
        return node


def load_yaml(text: str, field: str = "config") -> Any:
    """``yaml.safe_load`` with the limits above.

    Raises:
        InvalidArgumentError: Too large, too deep, or an alias bomb (naming ``field``).
        yaml.YAMLError: Not YAML.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise InvalidArgumentError(f"{field}: larger than {MAX_CONFIG_BYTES} bytes")
    loader = _BoundedLoader(text)
    loader.field = field
    try:
        return loader.get_single_data()
    except RecursionError:
        raise InvalidArgumentError(f"{field}: nested too deeply") from None
    except yaml.YAMLError as e:
        if "maximum nesting depth" in str(e):  # libyaml's own bound (pure Python: recursion)
            raise InvalidArgumentError(f"{field}: nested too deeply") from None
        raise
    except (ValueError, OverflowError) as e:  # e.g. an integer of more than 4300 digits
        raise InvalidArgumentError(f"{field}: {str(e)[:200]}") from None
    finally:
        loader.dispose()


def check_value(value: Any, field: str) -> None:
    """Refuse a parsed JSON/YAML value that is too deep or too big."""
    count = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise InvalidArgumentError(f"{field}: more than {MAX_NODES} values")
        if isinstance(v, dict):
            if depth >= MAX_DEPTH and v:
                raise InvalidArgumentError(f"{field}: nested more than {MAX_DEPTH} levels deep")
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list | tuple):
            if depth >= MAX_DEPTH and v:
                raise InvalidArgumentError(f"{field}: nested more than {MAX_DEPTH} levels deep")
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str) and "\x00" in v:
            raise InvalidArgumentError(f"{field}: strings must not contain NUL characters")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63:
            raise InvalidArgumentError(f"{field}: integer {str(v)[:20]}... is out of range")


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(s)


def loads_json(text: str, field: str) -> Any:
    """``json.loads`` with the limits above; errors are InvalidArgumentError naming ``field``."""
    if len(text) > MAX_JSON_BYTES:
        raise InvalidArgumentError(f"{field}: larger than {MAX_JSON_BYTES} bytes")
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"{field}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InvalidArgumentError(f"{field}: nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise InvalidArgumentError(f"{field}: {e}") from None
    check_value(value, field)
    return value


def check_request(msg: Message, prefix: str = "") -> None:
    """Refuse, naming the field, a request with a NUL in a string or an unknown enum value.

    Every string the master stores must fit a PostgreSQL text column (no NUL), and every enum
    must be one the master knows (proto3 lets any number through).
    """
    for fd, value in msg.ListFields():
        name = prefix + fd.name
        if fd.type == FieldDescriptor.TYPE_STRING:
            if any("\x00" in x for x in (value if fd.is_repeated else (value,))):
                raise InvalidArgumentError(f"{name}: strings must not contain NUL characters")
        elif _is_map(fd):
            if any("\x00" in str(k) for k in value):
                raise InvalidArgumentError(f"{name}: keys must not contain NUL characters")
            assert fd.message_type is not None
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.type == FieldDescriptor.TYPE_MESSAGE:
                for k, v in value.items():
                    check_request(v, f"{name}[{k!r}].")
            elif vfd.type == FieldDescriptor.TYPE_STRING and any(
                "\x00" in v for v in value.values()
            ):
                raise InvalidArgumentError(f"{name}: strings must not contain NUL characters")
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            known = fd.enum_type.values_by_number
            for i, v in enumerate(value if fd.is_repeated else (value,)):
                if v not in known:
                    where = f"{name}[{i}]" if fd.is_repeated else name
                    raise InvalidArgumentError(f"{where}: unknown {fd.enum_type.name} value {v}")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.is_repeated:
                for i, v in enumerate(value):
                    check_request(v, f"{name}[{i}].")
            else:
                check_request(value, name + ".")


def _is_map(fd: FieldDescriptor) -> bool:
    mt = fd.message_type
    return bool(
        fd.type == FieldDescriptor.TYPE_MESSAGE and mt is not None and mt.GetOptions().map_entry
    )
