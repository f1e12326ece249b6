#!/usr/bin/env python3
"""The module dependency view of a crate: which sibling modules each module uses, and whether
siblings depend on each other in a cycle.

    scripts/module_graph.py [--with-tests] [server/src]

Reads every `.rs` file under the source directory (the library's tree from `lib.rs`; `main.rs`
is the binary and is skipped), resolves each `crate::`, `super::` and `self::` path in the code
(comments and string literals removed; `use` trees with braces expanded) to the module it
names, and reduces every reference to an edge between the two siblings under the modules'
lowest common ancestor: `crate::transport::longpoll::http` using `crate::socket` is the edge
`transport -> socket` under `crate`. A module using its own ancestor (the contract a parent
declares, as `pubsub` does for its adapters) is not a sibling edge and is listed apart.

Test modules (`#[cfg(test)] mod name { ... }`) are left out unless `--with-tests` is given;
with it they count as part of their file's module.

Prints, per parent module, each child with the siblings it uses, then every cycle found among
siblings. Exits 1 if there is a cycle.
"""

import os
import re
import sys


def module_path(root, path):
    rel = os.path.relpath(path, root)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("lib", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def strip_code(text):
    """Removes comments, string and char literals (keeping line structure roughly)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "r" and re.match(r'r#*"', text[i:]):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [`a::b`, `a::c::d`, `a::c::e`] (globs kept as paths)."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for k, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = k
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner = tree[:start], tree[start + 1:k]
                parts, d, last = [], 0, 0
                for m, c in enumerate(inner):
                    if c == "{":
                        d += 1
                    elif c == "}":
                        d -= 1
                    elif c == "," and d == 0:
                        parts.append(inner[last:m])
                        last = m + 1
                parts.append(inner[last:])
                result = []
                for p in parts:
                    if p:
                        result.extend(expand_use(prefix + p))
                return result
    return [tree]


def resolve(path, here, modules):
    """The module an absolute or relative path names (its longest known module prefix)."""
    segs = path.split("::")
    if segs[0] == "crate":
        absolute = list(segs[1:])
    elif segs[0] in ("self", "super"):
        base = list(here)
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        absolute = base + segs
    else:
        return None
    for k in range(len(absolute), -1, -1):
        if tuple(absolute[:k]) in modules:
            return tuple(absolute[:k])
    return None


def split_tests(code):
    """The code outside `#[cfg(test)] mod name { ... }` blocks, and the blocks' bodies."""
    outside, inside, i = [], [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", code):
        if m.start() < i:
            continue
        outside.append(code[i:m.start()])
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        inside.append(code[m.end():j - 1])
        i = j
    outside.append(code[i:])
    return "".join(outside), inside


def references(code):
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        paths.extend(expand_use(m.group(1)))
    code_wo_use = re.sub(r"\buse\s+[^;]+;", "", code)
    paths.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code_wo_use))
    return paths


def main():
    args = [a for a in sys.argv[1:] if a != "--with-tests"]
    with_tests = "--with-tests" in sys.argv[1:]
    root = args[0] if args else "server/src"
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".rs") and not (dirpath == root and name == "main.rs"):
                path = os.path.join(dirpath, name)
                files[module_path(root, path)] = path
    modules = set(files)
    # Inline modules (`mod tests { ... }`) belong to their file's module.
    edges, ancestor_uses = set(), set()
    for here, path in files.items():
        code, tests = split_tests(strip_code(open(path, encoding="utf-8").read()))
        located = [(p, here) for p in references(code)]
        if with_tests:
            # Inside `mod tests`, `super` is the file's module.
            for body in tests:
                located.extend((p, here + ("tests",)) for p in references(body))
        for p, at in located:
            target = resolve(p, at, modules)
            if target is None or target == here:
                continue
            # Lowest common ancestor, then the two siblings under it.
            k = 0
            while k < min(len(here), len(target)) and here[k] == target[k]:
                k += 1
            if k == len(target):
                ancestor_uses.add((here, target))
            elif k == len(here):
                continue  # a parent naming its own child (declaring, re-exporting, connecting)
            else:
                parent = here[:k]
                edges.add((parent, here[k], target[k]))
    parents = sorted({m[:-1] for m in modules if m})
    cycles = []
    for parent in parents:
        children = sorted({m[len(parent)] for m in modules if len(m) > len(parent) and m[:len(parent)] == parent})
        deps = {c: sorted({b for (p, a, b) in edges if p == parent and a == c}) for c in children}
        name = "::".join(("crate",) + parent)
        print(f"{name}")
        for c in children:
            uses = ", ".join(deps[c]) or "-"
            print(f"  {c:<12} -> {uses}")
        # Tarjan's strongly connected components over the siblings.
        index, low, stack, on, counter = {}, {}, [], set(), [0]

        def visit(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in deps.get(v, []):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append((name, sorted(comp)))

        for c in children:
            if c not in index:
                visit(c)
    print()
    print("uses of an ancestor module (not sibling edges):")
    for here, target in sorted(ancestor_uses):
        print(f"  {'::'.join(('crate',) + here)} -> {'::'.join(('crate',) + target)}")
    print()
    if cycles:
        for name, comp in cycles:
            print(f"CYCLE under {name}: {' <-> '.join(comp)}")
        return 1
    print("no cycles between siblings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
