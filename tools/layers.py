#!/usr/bin/env python3
"""The module layers of moslora, as docs/ARCHITECTURE.md draws them, held against the code's own `crate::` imports.

usage: python3 tools/layers.py [PROJECT_ROOT]      (default: the current folder)

Each top-level module of src/ (a folder or a file) sits on a layer; a module may use modules on its own layer or
below, never above, and no two modules may use each other (directly or round a loop). Prints every import that
runs up a layer and every loop, with file and line, and exits 1 if there is any. Tests and benchmarks are not
read: they may reach anywhere.
"""
import os, re, sys

LAYERS = [
    ("foundation", ["error", "fsutil", "html", "hub", "image_file", "runtime", "run_lock", "shipped", "words"]),
    ("model", ["sdxl", "schedule"]),
    ("adapter", ["adapter"]),
    ("config", ["config"]),
    ("work", ["train", "render", "metrics", "toyworld"]),
    ("people and fleets", ["study", "sweep", "serve"]),
    ("front", ["demo", "cli", "app", "main", "bin"]),
]
RANK = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}


def module_of(rel):
    parts = rel.split(os.sep)
    if parts[0] != "src" or len(parts) < 2:
        return None
    name = parts[1][:-3] if parts[1].endswith(".rs") else parts[1]
    return None if name == "lib" else name


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    edges = {}  # (a, b) -> first "file:line"
    pat = re.compile(r"\b(?:crate|moslora)::(\w+)")
    for dirpath, _, files in os.walk(os.path.join(root, "src")):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)
            a = module_of(rel)
            if a is None:
                continue
            for n, line in enumerate(open(path, encoding="utf-8", errors="replace"), 1):
                code = line.split("//", 1)[0]
                for b in pat.findall(code):
                    if b != a and (os.path.isdir(os.path.join(root, "src", b)) or os.path.isfile(os.path.join(root, "src", b + ".rs"))):
                        edges.setdefault((a, b), f"{rel}:{n}")
    mods = sorted({m for e in edges for m in e})
    unplaced = [m for m in mods if m not in RANK]
    up = [(a, b, where) for (a, b), where in sorted(edges.items()) if a in RANK and b in RANK and RANK[b] > RANK[a]]
    # loops: strongly connected components of size > 1 (Tarjan)
    graph = {m: [b for (a, b) in edges if a == m] for m in mods}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for m in mods:
        if m not in index:
            visit(m)
    for name, ms in LAYERS[::-1]:
        present = [m for m in ms if m in mods]
        if present:
            print(f"{name:>18}: {', '.join(present)}")
    if unplaced:
        print(f"not on a layer yet (add them to docs/ARCHITECTURE.md and to this list): {', '.join(unplaced)}")
    for a, b, where in up:
        print(f"runs up a layer: {a} -> {b}  ({where})")
    for comp in sccs:
        links = [f"{a} -> {b} ({edges[(a, b)]})" for a in comp for b in comp if (a, b) in edges]
        print(f"loop: {' / '.join(comp)}: " + "; ".join(links))
    print(f"{len(up)} import(s) running up a layer, {len(sccs)} loop(s)")
    sys.exit(1 if up or sccs else 0)


if __name__ == "__main__":
    main()
