"""Reading YAML for specs (a `--config` file, a `--model-arg KEY=VALUE` value) with limits.

`yaml.safe_load` builds no objects but plain data, yet it still trusts the text's size. An
alias bomb ("billion laughs": nine anchors, each a list of nine aliases of the one before) is
a few hundred bytes that stand for 10**9 values; PyYAML shares them, so loading is quick, and
the blow-up comes later, when anything walks the data (validation, MLflow params, JSON for
Ray), after the run was created. So the loader here counts values as if every alias were
written out and refuses a document past `MAX_VALUES`. A spec file is a few dozen lines; an
anchor merged into a few places (`<<: *defaults`) stays far below the bound. It also refuses
nesting deeper than `MAX_DEPTH` (PyYAML's composer recurses once per level and would end in a
RecursionError) and files over `MAX_FILE_BYTES` (`--config /dev/zero`). Torch-free, like
`training.spec`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from training.errors import WaldoError

MAX_FILE_BYTES = 1 << 20  # a spec file is about 1 KB
MAX_VALUES = 10_000  # scalars, lists and mappings, each alias counted as what it stands for
MAX_DEPTH = 64  # lists and mappings inside each other


class _Refused(yaml.YAMLError):
    """Well-formed YAML that a spec may not be: too large once expanded, or too deep."""


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded_size(root: Node) -> None:
    """Count the values `root` stands for with every alias written out, without writing them
    out: each node's count is computed once (aliases share nodes). Iterative, so a deep
    document cannot exhaust the stack."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()  # nodes whose children are being counted: a way back is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in _children(node))
            if sizes[key] > MAX_VALUES:
                raise _Refused(f"stands for more than {MAX_VALUES:,} values once its aliases "
                               "(*name) are expanded; write the values out instead")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused("holds an alias inside its own anchor (a structure that contains "
                           "itself), which no spec field accepts")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with the bounds above, checked before any Python object is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nests lists and mappings more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node


def parse_yaml(text: str) -> Any:
    """`text` as plain data, within the bounds. Malformed or refused YAML, and values Python
    cannot hold (an integer of more than 4,300 digits, February 30th), raise `ValueError`
    whose message completes a sentence about the text: "... is not valid YAML: ..."."""
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise ValueError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ValueError(f"is not valid YAML: {' '.join(str(exc).split())}") from None
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"holds a value that cannot be read: {exc}") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file into a mapping, with one-line user errors for missing, unreadable,
    oversized or malformed files."""
    path = Path(path)
    name = repr(str(path))
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise WaldoError(f"spec file {name} does not exist") from None
    except OSError as exc:
        raise WaldoError(f"cannot read spec file {name}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise WaldoError(f"spec file {name} is larger than {MAX_FILE_BYTES >> 20} MiB; "
                         "a spec file holds a mapping of field: value")
    try:
        data = parse_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise WaldoError(f"spec file {name} is not UTF-8 text") from None
    except ValueError as exc:
        raise WaldoError(f"spec file {name} {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WaldoError(f"spec file {name} must hold a mapping of field: value")
    return data


__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_VALUES", "load_yaml", "parse_yaml"]
