#!/usr/bin/env python3
"""Flag functions in lib/*.c longer than a limit (default 120 lines).

Length is a smell when a function does several jobs. A function may be
longer when it is one job (a table, a state machine's switch): say why in a
comment that contains "length:" just above it (in its leading comment or the
lines before its signature), e.g.

    /* length: one switch over every option kind; splitting it scatters it. */

Exit status 1 when a function is over the limit without such a comment.
Usage: check-length.py [--limit N] [files...] (default: lib/*.c)
"""
import glob
import os
import re
import sys

NOT_FUNC = re.compile(r"^\s*(typedef|struct|union|enum|static\s+const|const)\b")


def strip(line, state):
    """line without comments and string/char literals; state carries an
    open block comment across lines."""
    out, i, n = [], 0, len(line)
    while i < n:
        if state["comment"]:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out)
            state["comment"], i = False, j + 2
            continue
        c = line[i]
        if line.startswith("/*", i):
            state["comment"], i = True, i + 2
        elif line.startswith("//", i):
            break
        elif c in "\"'":
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            out.append(c + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """(name, first line, body lines, waived) of each function in path."""
    lines = open(path, encoding="utf-8", errors="replace").read().split("\n")
    state = {"comment": False}
    depth, sig_start, pending, found = 0, None, "", []
    start = None
    for no, raw in enumerate(lines):
        code = strip(raw, state)
        if depth == 0:
            stripped = code.strip()
            if sig_start is None and stripped and not stripped.startswith("#") \
                    and not raw[:1].isspace():
                sig_start, pending = no, ""
            if sig_start is not None:
                pending += " " + code
        for ch in code:
            if ch == "{":
                if depth == 0 and sig_start is not None:
                    head = pending.split("{")[0]
                    if "(" in head and "=" not in head.split("(")[0] \
                            and not NOT_FUNC.match(head):
                        name = head.split("(")[0].split()[-1].lstrip("*")
                        start = (name, sig_start, no)
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0 and start:
                    name, sig, open_no = start
                    before = "\n".join(lines[max(0, sig - 12):sig + 1])
                    # the leading comment only: stop at the previous "}"
                    before = before.split("\n}\n")[-1]
                    found.append((name, sig + 1, no - open_no - 1,
                                  "length:" in before))
                    start = None
            if depth == 0 and ch in ";}":
                sig_start = None
        if depth == 0 and code.rstrip().endswith((";", "}")):
            sig_start = None
    return found


def main(argv):
    limit = 120
    if len(argv) > 2 and argv[1] == "--limit":
        limit, argv = int(argv[2]), argv[2:]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    files = argv[1:] or sorted(glob.glob(os.path.join(root, "lib", "*.c")))
    bad = 0
    for f in files:
        for name, line, n, waived in functions(f):
            if n <= limit:
                continue
            rel = os.path.relpath(f, root)
            if waived:
                print(f"waived: {rel}:{line}: {name}() is {n} lines")
            else:
                print(f"{rel}:{line}: {name}() is {n} lines (limit {limit}); "
                      "split it, or say why it is one job in a comment "
                      "containing \"length:\"")
                bad += 1
    if bad:
        print(f"{bad} function(s) over {limit} lines")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
