#!/usr/bin/env python3
"""Writes the COMMANDS section of dogpile(1) for help2man to include.

Usage: help_to_man.py path/to/dogpile OUTPUT

help2man reads only `dogpile --help`; this adds each subcommand's help, as
`dogpile help COMMAND` prints it, turned into roff: the subcommands are the
ones `dogpile --help` lists, so a new one appears in the man page by itself.
CLI11 lays the help out as a description, a Usage line, then sections
("Options:", "Examples:", ...) of two-space indented entries, and free text.
"""
import re
import subprocess
import sys

# "  name     description", or a name alone with its description on the next
# line, indented to CLI11's description column.
ENTRY = re.compile(r"^  (\S(?:\S| (?! ))*)(?: {2,}(.*))?$")
CONTINUED = re.compile(r"^ {4,}(\S.*)$")


def roff(text):
    """`text` made safe for roff: backslashes and hyphens kept as they are."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # A line that starts with a dot or quote would be read as a request.
    return "\\&" + text if text[:1] in (".", "'") else text


def help_of(binary, args):
    return subprocess.run([binary] + args, check=True, stdout=subprocess.PIPE,
                          universal_newlines=True).stdout


def commands(binary):
    """The subcommands `dogpile --help` lists, in its order."""
    names = []
    in_list = False
    for line in help_of(binary, ["--help"]).splitlines():
        if not line.startswith(" "):
            in_list = line == "Subcommands:"
            continue
        entry = ENTRY.match(line)
        if in_list and entry:
            names.append(entry.group(1))
    return names


def command_section(name, text):
    """One subcommand's help as an .SS subsection."""
    out = ['.SS "dogpile %s"' % name]
    section = None  # the "Xxx:" heading the lines are under, if any
    kind = None     # what the last line added was: "text", "example" or None
    for line in text.rstrip("\n").splitlines() + [""]:
        example = (section or "").startswith("Example") and line.startswith("  ")
        if kind == "example" and not example:
            out.append(".fi")
            kind = None
        if not line.strip():
            section, kind = None, None
            continue
        entry = ENTRY.match(line)
        continued = CONTINUED.match(line)
        if line.startswith("Usage: "):
            out += [".PP", "\\fBUsage:\\fR " + roff(line[len("Usage: "):])]
            kind = None
        elif not line.startswith(" ") and line.endswith(":"):
            section = line[:-1]
            out += [".PP", "\\fB%s:\\fR" % roff(section)]
            kind = None
        elif example:
            # Preformatted, one command a line, as it is typed.
            if kind != "example":
                out += [".IP", ".nf"]
            out.append(roff(line.strip()))
            kind = "example"
        elif section is not None and continued:
            out.append(roff(continued.group(1)))
        elif section is not None and entry:
            out += [".TP", "\\fB%s\\fR" % roff(entry.group(1))]
            if entry.group(2):
                out.append(roff(entry.group(2)))
        else:
            # Free text: paragraphs filled by the formatter.
            if kind != "text":
                out.append(".PP")
            out.append(roff(line.strip()))
            kind = "text"
    return out


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    binary, output = argv[1], argv[2]
    out = ["[COMMANDS]",
           "Each subcommand's help, as \\fBdogpile help\\fR \\fICOMMAND\\fR prints it."]
    for name in commands(binary):
        out += command_section(name, help_of(binary, ["help", name]))
    with open(output, "w") as f:
        f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
