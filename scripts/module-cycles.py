#!/usr/bin/env python3
"""Usage: scripts/module-cycles.py crates/<crate>/src [crates/<other>/src ...]

Lists import cycles between the modules of each crate given: a module uses another when its files
name `crate::<module>` (in `use` lines, paths or doc links) or `super::<sibling>` for nested modules; a
path through a re-export (`crate::App` where the crate root says `pub use app::App`) counts as naming the
module the item comes from. Prints
each strongly connected component of more than one module (prefixed with the crate's directory when
several are given); exit status 1 when there is one."""
import os, re, sys


def cycles(root):
    """The import cycles of the crate whose source directory is `root`, as (component, edges)."""
    def modname(path):
        rel = os.path.relpath(path, root)[:-3]
        parts = rel.split(os.sep)
        if parts[-1] in ("mod", "lib"): parts = parts[:-1]
        return "::".join(parts) or "crate"
    mods = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            if f.endswith(".rs"):
                p = os.path.join(d, f); mods[modname(p)] = open(p).read()
    names = set(mods)
    # Re-exports: (module, item name) -> the path the item comes from, from `pub use` lines.
    reexports = {}
    for m, src in mods.items():
        for u in re.finditer(r"pub(?:\([^)]*\))?\s+use\s+([^;]+);", src):
            body = " ".join(u.group(1).split())
            g = re.match(r"(?:self::)?([\w:]+?)::\{(.*)\}$", body)
            items = [g.group(1) + "::" + i.strip() for i in g.group(2).split(",") if i.strip()] if g else [body]
            for item in items:
                target, _, alias = item.removeprefix("self::").partition(" as ")
                alias = alias.strip() or target.split("::")[-1]
                if target.startswith("crate::"):
                    target = target[len("crate::"):]
                elif m != "crate":
                    target = m + "::" + target
                reexports[(m, alias)] = target
    def resolve(path, depth=0):
        parts = path.split("::")
        # the longest module prefix of path
        for i in range(len(parts), 0, -1):
            m = "::".join(parts[:i])
            if m in names:
                # an item the module re-exports names the module it comes from
                if i < len(parts) and (m, parts[i]) in reexports and depth < 8:
                    return resolve(reexports[(m, parts[i])], depth + 1) or m
                return m
        if ("crate", parts[0]) in reexports and depth < 8:
            return resolve(reexports[("crate", parts[0])], depth + 1)
        return None
    edges = {m: set() for m in names}
    for m, src in mods.items():
        # strip plain comments; doc comments count (their intra-doc links are dependencies too)
        src = re.sub(r"//(?![/!])[^\n]*", "", src)
        for use in re.finditer(r"crate::((?:\w+::)*\w+)", src):
            t = resolve(use.group(1))
            if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"): edges[m].add(t)
        # grouped uses: use crate::{a, b::c}
        for g in re.finditer(r"crate::\{([^}]*)\}", src):
            for item in re.split(r"[,\s]+", g.group(1)):
                item = item.strip()
                if item:
                    t = resolve(item.split("::{")[0])
                    if t and t != m and not m.startswith(t + "::") and not t.startswith(m + "::"): edges[m].add(t)
        parent = m.rsplit("::", 1)[0] if "::" in m else ""
        for use in re.finditer(r"super::(\w+)", src):
            t = resolve((parent + "::" if parent else "") + use.group(1)) if parent else resolve(use.group(1))
            if t and t != m and not t.startswith(m + "::") and not m.startswith(t + "::"): edges[m].add(t)
    # Tarjan
    idx, low, st, on, out, c = {}, {}, [], set(), [], [0]
    def sc(v):
        idx[v] = low[v] = c[0]; c[0] += 1; st.append(v); on.add(v)
        for w in edges[v]:
            if w not in idx: sc(w); low[v] = min(low[v], low[w])
            elif w in on: low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = st.pop(); on.discard(w); comp.append(w)
                if w == v: break
            if len(comp) > 1: out.append(sorted(comp))
    for v in sorted(names):
        if v not in idx: sc(v)
    return [(comp, edges) for comp in out]


sys.setrecursionlimit(10000)
roots = sys.argv[1:]
if not roots:
    sys.exit(__doc__)
found = False
for root in roots:
    for comp, edges in cycles(root):
        found = True
        prefix = f"{root}: " if len(roots) > 1 else ""
        print(f"{prefix}cycle:", ", ".join(comp))
        for a in comp:
            print("   ", a, "->", ", ".join(sorted(e for e in edges[a] if e in comp)))
sys.exit(1 if found else 0)
