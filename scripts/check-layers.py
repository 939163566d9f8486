#!/usr/bin/env python3
"""Fails on a new import cycle between the crate's top-level modules.

Reads every `crate::<module>` path under src/ (outside `#[cfg(test)]`
blocks: tests may reach across layers), builds the module graph and finds
its cycles (strongly connected components). An edge that lies on a cycle
must be listed in scripts/layers-allowed-cycles.txt, the cycles that exist
today and that issue 11 removes; a listed edge that no longer lies on a
cycle must be deleted from the list, so the list only shrinks and stays
true. `lib` and `main` are the crate roots and may use everything.

Usage: scripts/check-layers.py [--print]   (--print: the current cycle edges)
"""
import os
import re
import sys

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "src")
allowed_path = os.path.join(here, "layers-allowed-cycles.txt")

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


edges: dict[str, set[str]] = {}
path_re = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
for dirpath, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        module = rel.split(os.sep)[0].removesuffix(".rs")
        if module in ("lib", "main"):
            continue
        text = without_test_items(open(os.path.join(dirpath, name), encoding="utf-8").read())
        for m in path_re.finditer(text):
            if m.group(1) != module:
                edges.setdefault(module, set()).add(m.group(1))

# Tarjan's strongly connected components.
index: dict[str, int] = {}
low: dict[str, int] = {}
stack: list[str] = []
on_stack: set[str] = set()
components: list[set[str]] = []


def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
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
            components.append(component)


sys.setrecursionlimit(10_000)
for v in sorted(edges):
    if v not in index:
        visit(v)

on_cycle = {
    f"{a} -> {b}" for c in components for a in c for b in edges.get(a, ()) if b in c
}
if "--print" in sys.argv:
    print("\n".join(sorted(on_cycle)))
    sys.exit(0)

allowed = set()
for line in open(allowed_path, encoding="utf-8"):
    line = line.split("#")[0].strip()
    if line:
        allowed.add(" ".join(line.split()))

new = sorted(on_cycle - allowed)
gone = sorted(allowed - on_cycle)
if new:
    print("new import cycle edges (a module imports one that, through others, imports it back):")
    print("\n".join(f"  {e}" for e in new))
    print("break the cycle: move what both need down a layer, or pass it in (see ARCHITECTURE.md)")
if gone:
    print(f"no longer on a cycle; delete from {os.path.relpath(allowed_path)}:")
    print("\n".join(f"  {e}" for e in gone))
if new or gone:
    sys.exit(1)
print(f"module layers: no new cycle ({len(on_cycle)} known cycle edges left to remove)")
