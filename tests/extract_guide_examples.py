#!/usr/bin/env python3
"""Writes the user guide's complete examples to .cc files so the build compiles and runs them.

Usage: extract_guide_examples.py docs/guide.md out_1.cc [out_2.cc ...]

Convention in the guide:

  ```cpp       a complete program: it has an `int main(`, and is extracted,
               compiled against the library and run as a test. Every ```cpp
               block must be one.
  ```c++       a fragment: highlighted the same way, never extracted. It must
               not contain `int main(` (a complete program belongs in ```cpp).
  ``` (other)  shell, text, tables: ignored.

The language is the first word after the fence. HTML comments are skipped, so
they may mention fences freely.

The n-th ```cpp block goes to the n-th output file, in order. The number of
outputs is fixed in tests/meson.build; when the guide holds another number of
examples this fails, naming both numbers, so the guide and the tests never
drift apart silently. Each output starts with a #line directive, so compiler
errors point at the guide.
"""
import sys

EXAMPLE_FENCE = "```cpp"
FRAGMENT_FENCE = "```c++"
MAIN = "int main("


def fail(message):
    sys.stderr.write("extract_guide_examples: %s\n" % message)
    sys.exit(1)


def without_comments(text):
    """The text with every <!-- ... --> blanked out, line breaks kept (so line numbers hold)."""
    out = []
    pos = 0
    while True:
        start = text.find("<!--", pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        end = text.find("-->", start)
        if end < 0:
            end = len(text)
        out.append(text[pos:start])
        out.append("\n" * text.count("\n", start, end))
        pos = end + 3


def blocks(text, source):
    """Yields (fence and language, first code line number (1-based), code lines) per fenced
    block; the language is the first word of the info string, as in CommonMark."""
    lines = without_comments(text).splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            words = stripped[3:].split()
            info = "```" + (words[0] if words else "")
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end == len(lines):
                fail("%s:%d: the block opened here is never closed" % (source, i + 1))
            yield info, start + 1, lines[start:end]
            i = end + 1
        else:
            i += 1


def extract(text, source):
    examples = []
    for info, first_line, code in blocks(text, source):
        has_main = any(MAIN in line for line in code)
        if info == EXAMPLE_FENCE:
            if not has_main:
                fail("%s:%d: a ```cpp block without `int main(`: fence fragments as ```c++"
                     % (source, first_line - 1))
            examples.append((first_line, code))
        elif info == FRAGMENT_FENCE and has_main:
            fail("%s:%d: a ```c++ fragment with `int main(`: fence complete programs as ```cpp "
                 "so they are compiled and run" % (source, first_line - 1))
    return examples


def main(argv):
    if len(argv) < 3:
        fail("usage: extract_guide_examples.py GUIDE.md OUT_1.cc [OUT_2.cc ...]")
    guide, outputs = argv[1], argv[2:]
    try:
        with open(guide, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        fail("cannot read %s: %s" % (guide, e))
    examples = extract(text, guide)
    if not examples:
        fail("%s: no ```cpp example found" % guide)
    if len(examples) != len(outputs):
        fail("%s holds %d complete examples (```cpp blocks) but the build expects %d; "
             "update the list in tests/meson.build" % (guide, len(examples), len(outputs)))
    for (first_line, code), out in zip(examples, outputs):
        with open(out, "w", encoding="utf-8") as f:
            f.write('#line %d "%s"\n' % (first_line, guide))
            f.write("\n".join(code) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
