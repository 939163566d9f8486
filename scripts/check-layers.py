#!/usr/bin/env python3
"""Fails when an import between top-level modules points up a layer, or
when modules of one layer import each other in a cycle.

The layers are the diagram in ARCHITECTURE.md (the fenced block after
`<!-- layers -->`), top first: each line names a layer and its modules.
This script reads every `crate::<module>` path under src/ (the server
library) and tools/src/ (the tools crate, whose `quorumkv::<module>` paths
name the library's modules), outside `#[cfg(test)]` items (tests may reach
across layers), and checks each edge against the diagram, so the diagram
cannot drift from the code. Every top-level module of either crate must be
in exactly one layer. `lib` and `main` are the crate roots and may use
everything. The library never names the tools crate. Two seams are checked too: only
`membership` (and `node`'s error type) may use `ring`, and only `storage`
may use `rocksdb`.

Usage: scripts/check-layers.py [--print]   (--print: every edge, by layer)
"""
import os
import re
import sys

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.join(here, "..")
src = os.path.join(root, "src")
tools_src = os.path.join(root, "tools", "src")
# (source root, the prefixes that name a module from there)
crates = [(src, ("crate",)), (tools_src, ("crate", "quorumkv"))]
diagram_path = os.path.join(root, "ARCHITECTURE.md")


def without_test_items(text: str) -> str:
    """Drops each item marked `#[cfg(test)]`: up to its matching `}` when
    it has a body (a test module), else up to its `;` (a `use`)."""
    out, pos, mark = [], 0, "#[cfg(test)]"
    while (start := text.find(mark, pos)) >= 0:
        out.append(text[pos:start])
        i, depth = start + len(mark), 0
        while i < len(text):
            ch = text[i]
            if ch == ";" and depth == 0:
                break
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        pos = i + 1
    out.append(text[pos:])
    return "".join(out)


def read_layers() -> list[tuple[str, list[str]]]:
    text = open(diagram_path, encoding="utf-8").read()
    marker = text.find("<!-- layers -->")
    if marker < 0:
        sys.exit("ARCHITECTURE.md has no `<!-- layers -->` diagram")
    start = text.index("```", marker)
    start = text.index("\n", start) + 1
    end = text.index("```", start)
    layers = []
    for line in text[start:end].splitlines():
        words = [w for w in re.split(r"[\s·]+", line) if w]
        if len(words) >= 2 and not line.startswith(" "):
            layers.append((words[0], words[1:]))
    return layers


edges: dict[str, set[str]] = {}
modules: set[str] = set()
problems = []


def sources():
    """(crate root, path, path relative to its root) of every Rust file."""
    for base, _ in crates:
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.endswith(".rs"):
                    path = os.path.join(dirpath, name)
                    yield base, path, os.path.relpath(path, base)


for base, path, rel in sources():
    module = rel.split(os.sep)[0].removesuffix(".rs")
    if module in ("lib", "main"):
        continue
    modules.add(module)
    text = without_test_items(open(path, encoding="utf-8").read())
    prefixes = dict(crates)[base]
    path_re = re.compile(r"\b(?:" + "|".join(prefixes) + r")::([a-z_][a-z0-9_]*)")
    for m in path_re.finditer(text):
        if m.group(1) != module:
            edges.setdefault(module, set()).add(m.group(1))
    if base == src and "quorumkv_tools" in text:
        problems.append(f"src/{rel} names the tools crate: the server library must not")

layers = read_layers()
# Depth 0 is the top layer.
depth: dict[str, int] = {}
for i, (_, names) in enumerate(layers):
    for name in names:
        if name in depth:
            problems.append(f"`{name}` is in two layers of the diagram")
        depth[name] = i
for m in sorted(modules - depth.keys()):
    problems.append(f"module `{m}` is in no layer of the ARCHITECTURE.md diagram")
for m in sorted(depth.keys() - modules):
    problems.append(f"the diagram names `{m}`, which is no module under src/ or tools/src/")

for a in sorted(edges):
    for b in sorted(edges[a]):
        if a in depth and b in depth and depth[b] < depth[a]:
            problems.append(
                f"{a} ({layers[depth[a]][0]}) -> {b} ({layers[depth[b]][0]}): an import points up a layer"
            )

# Seams the diagram cannot show: placement is asked of `membership::Layout`
# (the ring is its detail), and RocksDB is `storage`'s.
only_users = {"ring": {"membership", "node"}}
for a in sorted(edges):
    for b, allowed in only_users.items():
        if b in edges[a] and a not in allowed:
            problems.append(f"{a} -> {b}: only {', '.join(sorted(allowed))} may use `{b}` (ask the layout)")
rocksdb_re = re.compile(r"\brocksdb::")
for base, path, rel in sources():
    if base != src or rel.split(os.sep)[0] != "storage":
        if rocksdb_re.search(without_test_items(open(path, encoding="utf-8").read())):
            problems.append(f"{os.path.relpath(path, root)} uses rocksdb: only `storage` may")

# Within a layer, imports may go either way but never round: Tarjan's
# strongly connected components over the same-layer edges.
index: dict[str, int] = {}
low: dict[str, int] = {}
stack: list[str] = []
on_stack: set[str] = set()


def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
        if depth.get(w) != depth.get(v):
            continue
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        component = set()
        while True:
            w = stack.pop()
            on_stack.discard(w)
            component.add(w)
            if w == v:
                break
        if len(component) > 1:
            problems.append(f"import cycle within a layer: {' <-> '.join(sorted(component))}")


for v in sorted(modules):
    if v not in index:
        visit(v)

if "--print" in sys.argv:
    for name, names in layers:
        for m in names:
            print(f"{name:12} {m:14} -> {' '.join(sorted(edges.get(m, ())))}")

if problems:
    print("module layers (ARCHITECTURE.md) broken:")
    print("\n".join(f"  {p}" for p in problems))
    print("move what both need down a layer, or pass it in; or change the diagram, if the design changed")
    sys.exit(1)
count = sum(len(v) for v in edges.values())
print(f"module layers: {count} imports between {len(modules)} modules, all pointing down {len(layers)} layers")
