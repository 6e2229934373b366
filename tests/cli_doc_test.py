#!/usr/bin/env python3
"""Checks that the example transcripts in docs/cli.md are the golden CLI transcripts.

Usage: cli_doc_test.py docs/cli.md tests/golden [--update]

docs/cli.md shows what the dogpile command prints by quoting the golden files
of tests/cli_golden_test.py, which the cli_golden test compares with real runs.
A fenced block that shows a command (a line starting with "$ ") is preceded,
on the line right before its opening fence, by one of:

  <!-- golden: FILE [FILE...] -->
      The block is those golden files of tests/golden/, one after the other,
      byte for byte. FILE#N takes only the N-th command of the file (from its
      "$ " line up to the next one), FILE#N-M the N-th to the M-th (1-based).

  <!-- not golden: REASON -->
      The block is not checked (say why: timings, a live run...).

Anything else fails: a transcript block without a marker, a marker not
followed by a fence, an unknown file, a command number out of range, or a
golden block that differs from its files (the diff is printed). --update
rewrites every golden block from its files, for after the golden files
have been regenerated (cli_golden_test.py --update); review the diff.
"""
import difflib
import os
import re
import sys

MARKER = re.compile(r"^<!--\s*(golden|not golden):\s*(.*?)\s*-->$")
FILE_SPEC = re.compile(r"^([\w.-]+)(?:#(\d+)(?:-(\d+))?)?$")

errors = []


def commands(text):
    """The golden transcript split before each "$ " line (one piece per command)."""
    pieces = []
    for line in text.splitlines(True):
        if line.startswith("$ ") or not pieces:
            pieces.append("")
        pieces[-1] += line
    return pieces


def expected_block(spec, golden_dir, where):
    out = []
    for item in spec.split():
        m = FILE_SPEC.match(item)
        if not m:
            errors.append("%s: %r is not FILE, FILE#N or FILE#N-M" % (where, item))
            return None
        name, first, last = m.group(1), m.group(2), m.group(3)
        try:
            with open(os.path.join(golden_dir, name), encoding="utf-8",
                      errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            errors.append("%s: no golden file %s in %s" % (where, name, golden_dir))
            return None
        if first is None:
            out.append(text)
            continue
        pieces = commands(text)
        lo, hi = int(first), int(last or first)
        if not 1 <= lo <= hi <= len(pieces):
            errors.append("%s: %s has %d commands, not %s" % (where, name, len(pieces),
                                                              item.split("#")[1]))
            return None
        out.extend(pieces[lo - 1:hi])
    return "".join(out)


def check(doc_path, golden_dir, update):
    with open(doc_path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines(True)
    out = []
    checked = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            out.append(line)
            i += 1
            continue
        # A fenced block: lines[i] opens it, lines[end] closes it.
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            errors.append("%s:%d: the block opened here is never closed" % (doc_path, i + 1))
            break
        body = "".join(lines[i + 1:end])
        where = "%s:%d" % (doc_path, i + 1)
        marker = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        if marker is None:
            if re.search(r"^\$ ", body, re.M):
                errors.append("%s: a transcript without a <!-- golden: FILE --> or "
                              "<!-- not golden: REASON --> line before its fence" % where)
        elif marker.group(1) == "not golden":
            if not marker.group(2):
                errors.append("%s: <!-- not golden: --> needs a reason" % where)
        else:
            want = expected_block(marker.group(2), golden_dir, where)
            if want is not None:
                checked += 1
                if update:
                    body = want
                elif body != want:
                    errors.append("%s: differs from %s (after a golden update, run this "
                                  "with --update and review the diff):\n%s" % (
                                      where, marker.group(2), "".join(difflib.unified_diff(
                                          want.splitlines(True), body.splitlines(True),
                                          "golden", "cli.md"))))
        out.append(line)
        out.append(body)
        out.append(lines[end])
        i = end + 1
    for n, line in enumerate(lines, 1):
        if MARKER.match(line.strip()) and (n == len(lines) or not lines[n].startswith("```")):
            errors.append("%s:%d: a marker must be the line right before a fence" % (doc_path, n))
    if update and not errors:
        with open(doc_path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(out))
    return checked


def main(argv):
    args = [a for a in argv[1:] if a != "--update"]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    checked = check(args[0], args[1], "--update" in argv)
    if checked == 0:
        errors.append("%s: no <!-- golden: FILE --> block found" % args[0])
    for e in errors:
        sys.stderr.write("cli_doc_test: %s\n" % e)
    if errors:
        return 1
    print("cli_doc_test: %d blocks %s the golden files" %
          (checked, "rewritten from" if "--update" in argv else "match"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
