"""The layering rules (README: Layout): the import-linter contracts in pyproject.toml hold, and
`training`, `serving` and `services` have no import cycle, counting imports inside functions.
(That light modules stay light is checked in fresh interpreters, in
tests/integration/test_fresh_imports.py.)

This is the one place CI runs import-linter (scripts/test.sh does not run it again)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping

import grimp
from support import REPO_ROOT

PACKAGES = ("waldo", "services", "training", "serving", "httpapi")


# --- import-linter ----------------------------------------------------------------------------
def test_import_linter_contracts_hold(monkeypatch, capsys):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(REPO_ROOT)
    # Its CLI configures logging with dictConfig, which disables every logger that exists at
    # that moment (waldo.jobs, waldo.serving, ...): later tests that read their records would
    # see none. Leave them enabled as they were.
    enabled = [logger for logger in logging.root.manager.loggerDict.values()
               if isinstance(logger, logging.Logger) and not logger.disabled]
    try:
        status = lint_imports(config_filename=str(REPO_ROOT / "pyproject.toml"), no_logo=True)
    finally:
        for logger in enabled:
            logger.disabled = False
    out = capsys.readouterr().out
    assert status == 0, out[-4000:]
    assert " 0 broken" in out, out[-4000:]


# --- no import cycles -------------------------------------------------------------------------
def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph {node: successors}, each
    sorted; iterative, so deep import chains cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def shortest_cycle(edges: Mapping[str, Iterable[str]], members: list[str]) -> list[str]:
    """The shortest cycle through the first of `members` (a strongly connected component), as
    [a, b, ..., a]: a breadth-first search for the way back, inside the component."""
    start, inside = members[0], set(members)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(edges[node]):
            if nxt == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [start, *reversed(chain[:-1]), start]
            if nxt in inside and nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    raise ValueError(f"{members} is not a cycle")


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each import cycle of the graph as a readable chain: one line per import, with the line
    that makes it."""
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    found = []
    for members in strongly_connected(edges):
        if len(members) == 1 and members[0] not in edges[members[0]]:
            continue
        chain = shortest_cycle(edges, members)
        steps = []
        for importer, imported in zip(chain, chain[1:]):
            detail = graph.get_import_details(importer=importer, imported=imported)
            where = f"line {detail[0]['line_number']}: {detail[0]['line_contents']}" if detail else ""
            steps.append(f"  {importer} -> {imported}   ({where})")
        others = (f"   (one cycle of several among {', '.join(members)})"
                  if len(members) > len(chain) - 1 else "")
        found.append("\n".join([" -> ".join(chain) + others, *steps]))
    return found


def test_no_import_cycles():
    """Imports inside functions and under TYPE_CHECKING count: a cycle hidden in a function is
    still two modules that cannot be understood, tested or moved apart."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert len(graph.modules) > 50  # the three packages were found
    cycles = import_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s):\n\n" + "\n\n".join(cycles)


def test_the_cycle_check_finds_and_spells_out_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"),
                               ("p.d", "p.e"), ("p.e", "p.d"), ("p.x", "p.a")]:
        graph.add_import(importer=importer, imported=imported, line_number=1,
                         line_contents=f"import {imported}")
    cycles = import_cycles(graph)
    assert [c.splitlines()[0] for c in cycles] == ["p.d -> p.e -> p.d", "p.a -> p.b -> p.c -> p.a"]
    assert "  p.b -> p.c   (line 1: import p.c)" in cycles[1]
