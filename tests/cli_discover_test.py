#!/usr/bin/env python3
"""The ways to find out what dogpile can do: its bash completion and man page.

Usage: cli_discover_test.py path/to/dogpile path/to/dogpile.bash path/to/cli_golden_fixture
                            [path/to/dogpile.1]

The completion script is sourced in bash and its function called as bash
would (COMP_WORDS, COMP_CWORD); its lists of commands and options are
compared with what `dogpile --help` and `dogpile help COMMAND` print, so they
cannot fall behind the command. The man page, when given, must hold every
subcommand with every option its help lists.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from checks import check, report

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cli"))
import help_to_man  # noqa: E402  (the man page's reading of the help)

TIMEOUT_S = 60


def options_of(binary, command):
    """{option: takes a value} from the Options: section of the help of
    `command` (dogpile's own when empty)."""
    text = subprocess.run([binary] + (["help", command] if command else ["--help"]),
                          stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    options = {}
    section = None
    for line in text.splitlines():
        if not line.startswith(" "):
            section = line
            continue
        entry = help_to_man.ENTRY.match(line)
        if section != "Options:" or not entry:
            continue
        words = entry.group(1).split()
        # "--dir DIR", "--limit N=0" take a value; "--json Excludes: --raw" does not.
        takes_value = len(words) > 1 and words[1] not in ("Excludes:", "Needs:")
        for name in words[0].split(","):
            options[name] = takes_value
    return options


def bash(script, body):
    """Runs `body` in bash after sourcing the completion script; its stdout."""
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", 'source "$0" && ' + body, script],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=TIMEOUT_S)
    if r.returncode != 0:
        return None
    return r.stdout


def complete(script, words):
    """COMPREPLY for the command line `words`, the cursor on the last word."""
    body = ('COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMPREPLY=(); '
            '_dogpile; printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", 'source "$0" && ' + body, script] +
                       words, stdout=subprocess.PIPE, universal_newlines=True, timeout=TIMEOUT_S)
    return [w for w in r.stdout.splitlines() if w]


def check_completion(binary, script, fixture_bin, tmp):
    out = bash(script, "complete -p dogpile")
    check("completion: sourcing it registers _dogpile for dogpile",
          out is not None and "-F _dogpile" in out and out.split()[-1] == "dogpile", str(out))

    # Its lists against the binary's help.
    commands = help_to_man.commands(binary)
    listed = (bash(script, "_dogpile_commands") or "").split()
    check("completion: its commands are the help's, and help",
          sorted(listed) == sorted(commands + ["help"]), "%s vs %s" % (listed, commands))
    for command in [""] + commands:
        options = options_of(binary, command)
        listed = (bash(script, "_dogpile_options %s" % command) or "").split()
        label = command or "dogpile itself"
        check("completion: the options of %s are the help's" % label,
              options and sorted(listed) == sorted(options),
              "%s vs %s" % (sorted(listed), sorted(options)))
        for option, takes_value in options.items():
            says = bash(script, "_dogpile_takes_value %s && echo yes || echo no" % option)
            check("completion: %s %s %s a value" % (label, option,
                                                    "takes" if takes_value else "takes no"),
                  says == ("yes\n" if takes_value else "no\n"), str(says))

    # Completions as bash asks for them.
    cache = os.path.join(tmp, "cache")
    subprocess.run([fixture_bin, cache, "populate"], check=True, timeout=TIMEOUT_S)
    stats = json.loads(subprocess.run([binary, "stats", "--json", "--dir", cache],
                                      stdout=subprocess.PIPE, check=True).stdout)
    regions = sorted(r["name"] for r in stats["regions"])
    os.mkdir(os.path.join(tmp, "dest-dir"))
    open(os.path.join(tmp, "dest-file"), "w").close()
    for words, want, exact in (
            (["dogpile", "st"], ["stats"], True),
            (["dogpile", "help", "co"], ["compact"], True),
            (["dogpile", "--"], ["--help", "--version"], True),
            (["dogpile", "compact", "--"], ["--dir", "--json", "--help"], True),
            (["dogpile", "ls", "--l"], ["--limit"], True),
            ([binary, "ls", "--dir", cache, ""], regions, True),
            ([binary, "get", "k", "--dir", cache, "--region", "u"], ["users"], True),
            ([binary, "invalidate", "--dir", cache, "d"], ["default"], True),
            (["dogpile", "compact", os.path.join(tmp, "dest-")], [os.path.join(tmp, "dest-dir")],
             True),
            (["dogpile", "exec", "--ttl", "1m", "--", "bas"], ["bash"], False),
            (["dogpile", "exec", "--ttl", "1m", "--"], ["--stale", "--scope"], False),
            (["dogpile", "exec", "--env", "PAT"], ["PATH"], False)):
        got = complete(script, words)
        check("completion: %s<TAB> gives %s" % (" ".join(words), " ".join(want)),
              (sorted(got) == sorted(want)) if exact else set(want) <= set(got), str(got))


def check_man_page(binary, page):
    with open(page) as f:
        text = f.read()
    check("man page: a section 1 page", text.count('.TH DOGPILE "1"') == 1, text[:300])
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "ENVIRONMENT"):
        check("man page: has %s" % section, "\n.SH %s\n" % section in text)
    for command in help_to_man.commands(binary):
        start = text.find('\n.SS "dogpile %s"\n' % command)
        if not check("man page: has dogpile %s" % command, start >= 0):
            continue
        end = text.find("\n.S", start + 1)
        body = text[start:end]
        missing = [o for o in options_of(binary, command) if help_to_man.roff(o) not in body]
        check("man page: dogpile %s has every option of its help" % command, not missing,
              str(missing))
    groff = shutil.which("groff")
    if groff:
        r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", page], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True)
        check("man page: groff formats it without a warning",
              r.returncode == 0 and r.stderr == "", r.stderr)
    else:
        print("note: no groff, the man page is not formatted")


def main(argv):
    if len(argv) not in (4, 5):
        sys.stderr.write(__doc__)
        return 2
    binary, script, fixture_bin = (os.path.abspath(a) for a in argv[1:4])
    with tempfile.TemporaryDirectory(prefix="dogpile-discover-") as tmp:
        check_completion(binary, script, fixture_bin, tmp)
    if len(argv) == 5:
        check_man_page(binary, argv[4])

    return report("cli_discover_test")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
