#!/usr/bin/env python3
"""Writes the README's usage example to a .cc file so the build compiles it.

Usage: extract_readme_example.py README.md out.cc

The example is the one ```cpp block between the lines
<!-- example:begin --> and <!-- example:end -->. Anything else (markers
missing, out of order, no cpp block, two blocks) is an error: the README and
the test must not drift apart silently.
"""
import sys

BEGIN = "<!-- example:begin -->"
END = "<!-- example:end -->"


def fail(message):
    sys.stderr.write("extract_readme_example: %s\n" % message)
    sys.exit(1)


def extract(text, source):
    lines = text.splitlines()
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1:
        fail("%s: expected one %r and one %r line, found %d and %d"
             % (source, BEGIN, END, len(begins), len(ends)))
    begin, end = begins[0], ends[0]
    if end < begin:
        fail("%s: %r comes before %r" % (source, END, BEGIN))
    block = lines[begin + 1:end]
    fences = [i for i, line in enumerate(block) if line.strip().startswith("```")]
    if len(fences) != 2 or block[fences[0]].strip() != "```cpp":
        fail("%s: expected exactly one ```cpp block between the markers" % source)
    code = block[fences[0] + 1:fences[1]]
    if not any("int main(" in line for line in code):
        fail("%s: the example has no main()" % source)
    # Line numbers in compiler errors point at the README.
    first_line = begin + 1 + fences[0] + 2
    return '#line %d "%s"\n' % (first_line, source) + "\n".join(code) + "\n"


def main(argv):
    if len(argv) != 3:
        fail("usage: extract_readme_example.py README.md out.cc")
    readme, out = argv[1], argv[2]
    try:
        with open(readme, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        fail("cannot read %s: %s" % (readme, e))
    code = extract(text, readme)
    with open(out, "w", encoding="utf-8") as f:
        f.write(code)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
