"""providers.yaml bytes -> a plain mapping, read safely.

``yaml.safe_load`` (no Python objects), after checks it does not make: at most
``MAX_CONFIG_BYTES``, UTF-8 text without NUL, a mapping at the top, and no key repeated
in a mapping (PyYAML would keep the last one silently). Every problem is one
``ConfigError`` line with the line and column. Aliases are walked once here, so a small
file of nested aliases ("billion laughs") stays cheap; ``expand.MAX_CONFIG_NODES`` bounds
the values it stands for.
"""

from __future__ import annotations

from typing import Any

import yaml

from timmy_magic.config.errors import clean_name
from timmy_magic.model.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20


def load_yaml(data: bytes | str, source: str) -> dict[str, Any]:
    """The top-level mapping of ``data`` ({} for an empty file). Raises ConfigError."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than the limit of {MAX_CONFIG_BYTES} bytes",
                          file=source)
    if isinstance(data, bytes):
        data = _text(data, source)
    try:
        raw = _safe_load(data, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"YAML syntax error at {where}{problem}", file=source) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping, got {type(raw).__name__}",
                          file=source)
    return raw


def _text(data: bytes, source: str) -> str:
    if b"\x00" in data:
        nul = data.index(b"\x00")
        raise ConfigError(f"is binary, not YAML text (NUL byte at offset {nul})",
                          file=source)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"is not UTF-8 text (bad byte at offset {exc.start})",
                          file=source) from None


def _safe_load(text: str, source: str) -> Any:
    """``yaml.safe_load``, rejecting duplicate keys. They are looked for in the composed
    node graph, before construction: ``SafeConstructor.construct_mapping`` sees a mapping
    after ``<<`` merges were flattened into it (where repeating a key is the point)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _reject_duplicate_keys(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _reject_duplicate_keys(root: yaml.Node, source: str) -> None:
    merge = "tag:yaml.org,2002:merge"
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, tuple[Any, ...], str | None]] = [(root, (), None)]
    while todo:  # iterative: a deep file must not exhaust the stack here
        node, path, provider = todo.pop()
        if id(node) in seen_nodes:
            continue  # an alias: walked once (an alias bomb stays small here)
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                label = provider
                if path == ("providers",):
                    label = _node_name(item) or f"#{i + 1}"
                todo.append((item, (*path, i), label))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == merge:
                    continue
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first_line:
                    rel = path[2:] if provider else path
                    raise ConfigError(
                        f"duplicate key {key.value[:60]!r} at line {line} (first at line "
                        f"{first_line[key.tag, key.value]})", file=source, provider=provider,
                        field=".".join(map(str, (*rel, key.value[:60]))))
                first_line[key.tag, key.value] = line
                todo.append((value, (*path, key.value), provider))


def _node_name(node: yaml.Node) -> str | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "name" \
                    and isinstance(value, yaml.ScalarNode) and clean_name(value.value):
                return str(value.value)
    return None
