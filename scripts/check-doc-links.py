#!/usr/bin/env python3
"""Check every relative link of the documentation.

For README.md, CHANGELOG.md, docs/*.md and the bindings' READMEs: each
Markdown link or image whose target is not a URL must name a file or
directory that exists (relative to the page), and a `#fragment` pointing into
a Markdown page must name one of its headings (GitHub's anchors: lower case,
punctuation dropped, spaces as hyphens). Links inside code blocks and code
spans are not links and are skipped.

Usage: check-doc-links.py [repository root]   (default: this script's ../)
Exit status 1 when a link is broken, with one line per broken link.
"""
import glob
import os
import re
import sys

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose_lines(text):
    """(line number, line) outside fenced code blocks, code spans blanked."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * len(m.group(1))
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            yield n, re.sub(r"`[^`]*`", "``", line)


def anchors(path, cache={}):
    if path not in cache:
        seen, out = {}, set()
        with open(path, encoding="utf-8") as f:
            for _, line in prose_lines(f.read()):
                m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if not m:
                    continue
                slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
                k = seen.get(slug, 0)
                seen[slug] = k + 1
                out.add(slug if k == 0 else f"{slug}-{k}")
        cache[path] = out
    return cache[path]


def check(root, page):
    bad = []
    with open(page, encoding="utf-8") as f:
        text = f.read()
    for n, line in prose_lines(text):
        for m in LINK.finditer(line):
            target = m.group(1)
            if URL.match(target):
                continue
            path, _, frag = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            where = f"{os.path.relpath(page, root)}:{n}: {target}"
            if not os.path.exists(full):
                bad.append(f"{where}: no such file")
            elif frag and full.endswith(".md") and frag not in anchors(full):
                bad.append(f"{where}: no heading #{frag} in {os.path.relpath(full, root)}")
    return bad


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                           os.path.join(os.path.dirname(__file__), ".."))
    pages = [os.path.join(root, p) for p in ("README.md", "CHANGELOG.md")]
    pages += sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    pages += sorted(glob.glob(os.path.join(root, "bindings", "*", "README.md")))
    pages = [p for p in pages if os.path.exists(p)]
    bad = [b for p in pages for b in check(root, p)]
    for b in bad:
        print(b)
    links = sum(len(LINK.findall(l)) for p in pages
                for _, l in prose_lines(open(p, encoding="utf-8").read()))
    print(f"check-doc-links: {len(pages)} pages, {links} links, {len(bad)} broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
