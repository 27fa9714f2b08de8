#!/usr/bin/env python3
"""The option reference in docs/configuration.md, made from the library's
own table (`spotinfer options --json`), so the page cannot drift from what
the library accepts.

    scripts/options-doc.py SPOTINFER_TOOL DOC           rewrite the reference
    scripts/options-doc.py --check SPOTINFER_TOOL DOC   exit 1 if it differs

The reference stands between the lines BEGIN and END below; everything else
in DOC is left as it is.
"""
import json
import subprocess
import sys

BEGIN = "<!-- options: begin (scripts/options-doc.py writes this part) -->"
END = "<!-- options: end -->"


def fmt_number(v):
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)
    return str(v)


def cell(text):
    return str(text).replace("|", "\\|")


def row(opt):
    default = json.dumps(opt["default"])
    bounds = ""
    if "min" in opt and "max" in opt:
        bounds = "%s – %s" % (fmt_number(opt["min"]), fmt_number(opt["max"]))
    return "| `%s` | %s | `%s` | %s | %s |" % (
        opt["path"], opt["type"], cell(default), bounds, cell(opt["doc"]))


def reference(options):
    """One table a top-level section, in the library's order."""
    out, section = [], None
    for opt in options:
        top = opt["path"].split(".")[0]
        if top != section:
            section = top
            if out:
                out.append("")
            out += ["### `%s`" % top, "",
                    "| option | type | default | range | what it does |",
                    "|---|---|---|---|---|"]
        out.append(row(opt))
    return "\n".join(out)


def splice(doc, body):
    head, sep, rest = doc.partition(BEGIN)
    if not sep or END not in rest:
        sys.exit("options-doc: the page has no %s ... %s block" % (BEGIN, END))
    tail = rest.split(END, 1)[1]
    return head + BEGIN + "\n\n" + body + "\n\n" + END + tail


def main(argv):
    check = argv[:1] == ["--check"]
    if check:
        argv = argv[1:]
    if len(argv) != 2:
        sys.exit(__doc__)
    tool, path = argv
    got = subprocess.run([tool, "options", "--json"], check=True,
                         capture_output=True, text=True).stdout
    options = json.loads(got)["options"]
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    new = splice(doc, reference(options))
    if check:
        if new != doc:
            print("options-doc: %s differs from `spotinfer options`; run "
                  "scripts/options-doc.py %s %s" % (path, tool, path))
            return 1
        print("options-doc: %d options, %s matches" % (len(options), path))
        return 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
