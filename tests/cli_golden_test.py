#!/usr/bin/env python3
"""Golden-output tests of the dogpile subcommands, in text and --json form.

Usage: cli_golden_test.py path/to/dogpile path/to/tests/golden [path/to/cli_golden_fixture]
                          [--update]

Each case runs one or more dogpile commands on a copy of a cache that
cli_golden_fixture wrote with a fixed clock (so every created/expires time is
the same on every run) and compares a transcript -- command line, stdout,
stderr, exit status -- with tests/golden/<case>.txt (text) and
tests/golden/<case>.json (the same commands with --json). The only volatile
values, the temporary directory and the store's own sizes (map, data file,
pages in use, reader slots), are replaced by placeholders first. --update
rewrites the golden files from this run (and removes ones no case makes).

Beside the transcripts it checks what a file comparison cannot: --json output
parses as one JSON document whose values round-trip (keys that are not UTF-8,
hex payloads, JSON payloads); hexdumps match `hexdump -C`; `get --raw` is byte
exact; the default directory comes from $DOGPILE_DIR or $XDG_CACHE_HOME; a
missing directory is never created; progress bars appear on a terminal and
never in a pipe.

The fixture defaults to tests/cli_golden_fixture next to the dogpile binary's
cli/ directory in the build tree.
"""
import json
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading

from checks import check, report

TIMEOUT_S = 120
PROGRESS_ENTRIES = 6000  # above the CLI's 5,000-entry progress threshold

LONG_KEY = "long:" + "x" * 600
ODD_KEY = b"tab\tand\x01\xff"
BLOB = bytes((i * 3) % 256 for i in range(80))
SETTINGS = {"value": {"name": 'nightly "report"', "retries": 3, "ratio": 0.25,
                       "tags": ["a", "b/c", "ünï"],
                       "limits": [{"key": "cpu", "value": 4}, {"key": "memory_mb", "value": 512}]}}

# (case, cache, commands). A cache is "clean" (the fixture's populate),
# "corrupt" (populate + corrupt) or "bare" (an empty cache that no program
# recorded a max_size in), copied fresh for every case; "missing" is a path
# that does not exist, "empty" an empty directory. Each command gets
# --dir (unless it has one) and, in the .json variant, --json.
CASES = [
    ("stats", "clean", [["stats"]]),
    ("stats_bare", "bare", [["stats"]]),
    ("stats_zero", "clean", [["stats", "--zero", "--region", "users"], ["stats"],
                             ["stats", "--zero"], ["stats"],
                             ["stats", "--zero", "--region", "nosuch"],
                             ["stats", "--region", "users"], ["stats", "--zero", "--region", ""]]),
    ("ls", "clean", [["ls"]]),
    ("ls_region_prefix_limit", "clean", [["ls", "users", "--prefix", "user:", "--limit", "1"]]),
    ("ls_prefix", "clean", [["ls", "--prefix", "settings"]]),
    ("ls_no_match", "clean", [["ls", "default", "--prefix", "nothing-like-this"]]),
    ("ls_no_region", "clean", [["ls", "nosuch"]]),
    ("ls_corrupt", "corrupt", [["ls", "default", "--prefix", "broken"],
                               ["ls", "default", "--prefix", "truncated"]]),
    ("get_json_codec", "clean", [["get", "settings"]]),
    ("get_json_escapes", "clean", [["get", "json.escapes"]]),
    ("get_json_not_parsed", "clean", [["get", "json.invalid"], ["get", "json.deep"]]),
    ("get_text", "clean", [["get", "greeting"]]),
    ("get_utf8", "clean", [["get", "grüße/ключ"]]),
    ("get_odd_key", "clean", [["get", ODD_KEY]]),
    ("get_quote_key", "clean", [["get", 'quote"back\\slash']]),
    ("get_bytes", "clean", [["get", "blob"]]),
    ("get_repeated_bytes", "clean", [["get", "zeros"]]),
    ("get_binary", "clean", [["get", "settings.bin"]]),
    ("get_portable_binary", "clean", [["get", "settings.portable"]]),
    ("get_long_key", "clean", [["get", LONG_KEY]]),
    ("get_expired", "clean", [["get", "expired"]]),
    ("get_expires_later", "clean", [["get", "later"]]),
    ("get_fraction", "clean", [["get", "fraction"]]),
    ("get_region", "clean", [["get", "user:1", "--region", "users"]]),
    ("get_exec", "clean", [["get", "nightly/f8a456adc9d24e3a7f5440603ffe1103", "--region",
                            "exec"]]),
    ("ls_exec", "clean", [["ls", "exec"]]),
    ("get_missing", "clean", [["get", "nope"]]),
    ("get_missing_region", "clean", [["get", "greeting", "--region", "nosuch"]]),
    ("get_corrupt", "corrupt", [["get", "broken"]]),
    ("get_truncated", "corrupt", [["get", "truncated"]]),
    ("rm", "clean", [["rm", "greeting"], ["get", "greeting"], ["rm", "greeting"]]),
    ("rm_region", "clean", [["rm", "user:2", "--region", "users"],
                            ["ls", "users"]]),
    ("purge", "clean", [["purge"], ["ls", "--prefix", "expired"], ["ls", "users"],
                        ["purge"]]),
    # The fixture's entries were created on 2024-05-01: none a century ago, all a day ago.
    ("purge_older_than", "clean", [["purge", "--older-than", "36500d"], ["ls", "users"],
                                   ["purge", "--older-than", "1d"], ["ls"],
                                   ["purge", "--older-than", "soon"],
                                   ["purge", "--older-than", "0s"],
                                   ["purge", "--older-than", ""]]),
    ("clear_region", "clean", [["clear", "users"], ["ls", "users"], ["stats"]]),
    ("clear_all", "clean", [["clear", "--all"], ["ls"]]),
    ("clear_needs_region_or_all", "clean", [["clear"], ["ls", "users"]]),
    ("usage_errors", "clean", [["frobnicate"], ["verifyy"], ["ls", "--limit", "-5"],
                               ["ls", "--limit", "99999999999999999999"],
                               ["ls", "--limit", "1e3"], ["ls", "--limt", "3"],
                               ["ls", "users", "b", "c"], ["ls", "--prefx=user"]]),
    ("empty_arguments", "clean", [["clear", ""], ["stats", "--dir", ""], ["ls", ""],
                                  ["get", ""], ["get", "k", "--region", ""], ["rm", ""],
                                  ["invalidate", ""], ["compact", ""], ["ls", "users"]]),
    ("clear_no_region", "clean", [["clear", "nosuch"]]),
    ("invalidated", "clean", [["invalidate", "users"], ["invalidate", "default", "--soft"],
                              ["ls", "users"], ["ls", "default", "--prefix", "g"],
                              ["get", "user:1", "--region", "users"], ["stats"],
                              ["invalidate", "nosuch"], ["invalidate", "nosuch", "--create"],
                              ["stats"]]),
    ("invalidate", "clean", [["invalidate", "users"]]),
    ("invalidate_soft", "clean", [["invalidate", "users", "--soft"]]),
    ("verify", "clean", [["verify"]]),
    ("verify_corrupt", "corrupt", [["verify"]]),
    ("compact", "clean", [["compact", "{TMP}/copy"], ["ls", "users", "--dir", "{TMP}/copy"],
                          ["compact", "{TMP}/copy"]]),
    ("missing_dir", "missing", [["stats"], ["ls"], ["get", "greeting"], ["verify"]]),
    ("not_a_cache", "empty", [["stats"], ["rm", "greeting"]]),
    ("usage", "clean", [["get"], ["ls", "--limit", "many"], ["invalidate"], ["nosuch"]]),
]

# Volatile values: what LMDB reports about its map, file, pages and reader table.
NORMALISE = [
    (re.compile(r"^((?:map|data file)\s+)\S+ \S+$", re.M), r"\1<SIZE>"),
    (re.compile(r"^((?:used|free)\s+)\S+ \S+ \(\d+ pages?\)$", re.M), r"\1<SIZE> (<N> pages)"),
    (re.compile(r"^(readers\s+)\d+ of (\d+)$", re.M), r"\1<N> of \2"),
    (re.compile(r'^(\s*"(?:map_size|file_size|page_size|used_pages|free_pages|used_bytes|'
                r'free_bytes|readers_used|source_file_size|dest_file_size)": )\d+', re.M),
     r"\1<N>"),
    (re.compile(r"(: data\.mdb )\S+ \S+ \(the original: \S+ \S+\)"),
     r"\1<SIZE> (the original: <SIZE>)"),
    # Invalidation stamps continue a sequence that starts at the real clock.
    (re.compile(r"(at stamp )\d+"), r"\1<STAMP>"),
    (re.compile(r'("(?:hard|soft)_stamp": )\d+'), r"\1<STAMP>"),
]


def clean_env(extra=None):
    env = dict(os.environ)
    for var in ("DOGPILE_DIR", "XDG_CACHE_HOME"):
        env.pop(var, None)
    env.update(extra or {})
    return env


def run(binary, args, env=None, stderr=subprocess.PIPE):
    return subprocess.run([binary] + args, env=env or clean_env(), stdout=subprocess.PIPE,
                          stderr=stderr, timeout=TIMEOUT_S)


def text(data):
    return data.decode("utf-8", "surrogateescape")


def show_arg(arg):
    if isinstance(arg, bytes):
        return "$'" + "".join(chr(b) if 0x20 <= b < 0x7f and b not in b"'\\" else "\\x%02x" % b
                              for b in arg) + "'"
    return shlex.quote(arg)


def fixture(fixture_bin, directory, *args):
    r = subprocess.run([fixture_bin, directory] + list(args), capture_output=True,
                       timeout=TIMEOUT_S)
    if r.returncode != 0:
        raise RuntimeError("cli_golden_fixture %s failed (exit %d): %s" %
                           (" ".join(args), r.returncode, text(r.stderr)))


def transcript(binary, tmp, cache_dir, commands, json_mode):
    """Runs the commands; returns (normalised transcript, list of raw results)."""
    out = []
    results = []
    for command in commands:
        args = [a.replace("{TMP}", tmp) if isinstance(a, str) else a for a in command]
        if "--dir" not in args:
            args += ["--dir", cache_dir]
        if json_mode:
            args.append("--json")
        r = run(binary, args)
        results.append((args, r))
        shown = " ".join(show_arg(a) for a in ["dogpile"] + args)
        out.append("$ " + shown + "\n")
        stdout = text(r.stdout)
        out.append(stdout)
        if stdout and not stdout.endswith("\n"):
            out.append("\n[no newline at end of stdout]\n")
        if r.stderr:
            out.append("--- stderr\n" + text(r.stderr))
        out.append("--- exit %d\n" % r.returncode)
    result = "".join(out).replace(tmp, "$TMP")
    for pattern, replacement in NORMALISE:
        result = pattern.sub(replacement, result)
    return result, results


def check_json_results(case, results):
    for args, r in results:
        label = "%s: %s --json" % (case, args[0])
        if r.returncode == 2:
            check(label + ": usage errors print nothing on stdout", r.stdout == b"")
            continue
        if r.returncode in (1, 3) and (args[0] != "verify" or not r.stdout):
            check(label + ": an error leaves stdout empty", r.stdout == b"", text(r.stdout))
            check(label + ": the error is text on stderr", r.stderr.startswith(b"dogpile: "),
                  text(r.stderr))
            continue
        try:
            json.loads(r.stdout.decode("utf-8"))
            check(label + ": stdout is one JSON document", True)
        except ValueError as e:
            check(label + ": stdout is one JSON document", False, "%s\n%s" % (e, text(r.stdout)))
        if r.returncode == 0:
            check(label + ": nothing on stderr", r.stderr == b"", text(r.stderr))


def run_cases(binary, golden_dir, fixture_bin, tmp, update):
    bases = {}
    for name, steps in (("clean", ["populate"]), ("corrupt", ["populate", "corrupt"]),
                        ("bare", ["bare"])):
        path = os.path.join(tmp, "base-" + name)
        for step in steps:
            fixture(fixture_bin, path, step)
        bases[name] = path

    expected_files = set()
    for case, cache, commands in CASES:
        for json_mode in (False, True):
            work = tempfile.mkdtemp(prefix="case-", dir=tmp)
            cache_dir = os.path.join(work, "cache")
            if cache in bases:
                shutil.copytree(bases[cache], cache_dir)
            elif cache == "empty":
                os.mkdir(cache_dir)
            result, results = transcript(binary, work, cache_dir, commands, json_mode)
            if cache == "missing":
                check(case + ": a read command does not create the directory",
                      not os.path.exists(cache_dir))
            if json_mode:
                check_json_results(case, results)
            golden = os.path.join(golden_dir, case + (".json" if json_mode else ".txt"))
            expected_files.add(os.path.basename(golden))
            if update:
                with open(golden, "w", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(result)
                continue
            try:
                with open(golden, encoding="utf-8", errors="surrogateescape") as f:
                    expected = f.read()
            except FileNotFoundError:
                check(os.path.basename(golden), False, "missing; run with --update")
                continue
            if not check(os.path.basename(golden) + " matches", result == expected,
                         diff(expected, result)):
                pass
            shutil.rmtree(work)

    # Help texts: golden too, so a changed option or footer shows up here.
    help_out = []
    for command in [[]] + [[c] for c in ("stats", "ls", "get", "rm", "purge", "clear",
                                         "invalidate", "verify", "compact", "demo")]:
        r = run(binary, command + ["--help"])
        help_out.append("$ dogpile %s\n%s--- exit %d\n" % (" ".join(command + ["--help"]),
                                                          text(r.stdout), r.returncode))
        if command:
            check("%s --help has an example in its footer" % command[0],
                  re.search(r"^Examples?:\n  dogpile %s" % command[0], text(r.stdout), re.M)
                  is not None, text(r.stdout))
            check("%s --help lists --dir" % command[0], "--dir" in text(r.stdout))
            check("%s --help lists --json" % command[0], "--json" in text(r.stdout))
    # exec's help is exec_test.py's to check; its line in the list may change.
    help_text = re.sub(r"^(  exec +).*$", r"\1(see dogpile exec --help)", "".join(help_out),
                       flags=re.M)
    expected_files.add("help.txt")
    help_path = os.path.join(golden_dir, "help.txt")
    if update:
        with open(help_path, "w", encoding="utf-8") as f:
            f.write(help_text)
    else:
        try:
            with open(help_path, encoding="utf-8") as f:
                expected = f.read()
            check("help.txt matches", help_text == expected, diff(expected, help_text))
        except FileNotFoundError:
            check("help.txt", False, "missing; run with --update")

    present = {f for f in os.listdir(golden_dir) if f.endswith((".txt", ".json"))}
    stale = present - expected_files
    if update:
        for name in stale:
            os.remove(os.path.join(golden_dir, name))
    else:
        check("no stale golden files", not stale, " ".join(sorted(stale)))


def diff(expected, actual):
    import difflib
    return "\n" + "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                               "golden", "actual"))


def hexdump_c(data):
    r = subprocess.run(["hexdump", "-C"], input=data, capture_output=True, timeout=TIMEOUT_S)
    return text(r.stdout)


def check_values(binary, fixture_bin, tmp):
    """What the transcripts cannot show: exact bytes and round trips."""
    cache = os.path.join(tmp, "values")
    fixture(fixture_bin, cache, "populate")
    d = ["--dir", cache]

    r = run(binary, ["get", "blob", "--raw"] + d)
    check("get --raw writes the payload's bytes exactly", r.returncode == 0 and r.stdout == BLOB,
          repr(r.stdout))
    r = run(binary, ["get", ODD_KEY, "--raw"] + d)
    check("get --raw finds a key with non-UTF-8 bytes", r.stdout == b"odd key\n", repr(r.stdout))
    r = run(binary, ["get", "blob", "--raw", "--json"] + d)
    check("get --raw and --json exclude each other", r.returncode == 2, text(r.stderr))

    # scripts/lib.sh installs hexdump (bsdextrautils); without it this
    # comparison would pass by not running, so its absence is a failure.
    check("hexdump is installed to compare with", shutil.which("hexdump") is not None)
    if shutil.which("hexdump"):
        for key, data in (("blob", BLOB), ("zeros", bytes(100))):
            r = run(binary, ["get", key] + d)
            body = text(r.stdout).split("\n\n", 1)[-1]
            check("get %s: the hexdump is hexdump -C's" % key, body == hexdump_c(data),
                  "\n%s\nvs\n%s" % (body, hexdump_c(data)))

    r = run(binary, ["get", "blob", "--json"] + d)
    doc = json.loads(r.stdout)
    check("get --json: a hex payload decodes to the bytes",
          doc["payload_format"] == "hex" and bytes.fromhex(doc["payload"]) == BLOB, str(doc))
    r = run(binary, ["get", "settings", "--json"] + d)
    doc = json.loads(r.stdout)
    check("get --json: a JSON-codec payload is embedded as JSON",
          doc["payload_format"] == "json" and doc["payload"] == SETTINGS, str(doc))
    r = run(binary, ["get", "grüße/ключ", "--json"] + d)
    doc = json.loads(r.stdout)
    check("get --json: UTF-8 key and text payload are exact",
          doc["key"] == "grüße/ключ" and doc["payload"] == "Grüße, 世界\n", str(doc))
    r = run(binary, ["ls", "--json"] + d)
    entries = json.loads(r.stdout)["entries"]
    by_key = {bytes.fromhex(e["key_hex"]) if "key_hex" in e else e["key"].encode(): e
              for e in entries}
    check("ls --json: a non-UTF-8 key round-trips through key_hex", ODD_KEY in by_key,
          str(sorted(by_key)))
    exact = {LONG_KEY.encode(), 'quote"back\\slash'.encode(), "grüße/ключ".encode()}
    check("ls --json: keys are exact", exact <= set(by_key), str(sorted(by_key)))
    check("ls --json: sizes are numbers",
          all(isinstance(e["size"], int) and isinstance(e["write_seq"], int) for e in entries))

    # The default directory: $DOGPILE_DIR, then $XDG_CACHE_HOME/dogpile.
    with_flag = run(binary, ["ls"] + d)
    r = run(binary, ["ls"], env=clean_env({"DOGPILE_DIR": cache, "HOME": tmp}))
    check("DOGPILE_DIR is the default directory", r.returncode == 0 and r.stdout ==
          with_flag.stdout, text(r.stderr))
    xdg = os.path.join(tmp, "xdg")
    r = run(binary, ["stats"], env=clean_env({"XDG_CACHE_HOME": xdg, "HOME": tmp}))
    check("XDG_CACHE_HOME/dogpile is the default next, and a missing one is exit 3 naming it",
          r.returncode == 3 and os.path.join(xdg, "dogpile") in text(r.stderr) and
          not os.path.exists(os.path.join(xdg, "dogpile")), text(r.stderr))

    # Pages: in use and free add up to no more than the data file; removing
    # entries moves pages from one to the other.
    def pages(label):
        r = run(binary, ["stats", "--json"] + d)
        doc = json.loads(r.stdout) if r.returncode == 0 else {}
        fields = ("page_size", "used_pages", "free_pages", "used_bytes", "free_bytes")
        if not check("stats --json %s: page counts are numbers" % label,
                     all(isinstance(doc.get(f), int) for f in fields), text(r.stdout)):
            return None
        check("stats --json %s: bytes are pages times the page size" % label,
              doc["used_bytes"] == doc["used_pages"] * doc["page_size"] and
              doc["free_bytes"] == doc["free_pages"] * doc["page_size"], str(doc))
        check("stats --json %s: used and free pages fit in the data file" % label,
              (doc["used_pages"] + doc["free_pages"]) * doc["page_size"] <= doc["file_size"],
              str(doc))
        return doc

    before = pages("before clear")
    run(binary, ["clear", "--all"] + d)
    after = pages("after clear")
    if before and after:
        check("clear moves pages from used to free",
              after["used_pages"] < before["used_pages"] and
              after["free_pages"] > before["free_pages"], "%s\n%s" % (before, after))
        r = run(binary, ["stats"] + d)
        check("stats shows used and free pages",
              re.search(r"^used +\S+ \S+ \(%d pages?\)$" % after["used_pages"], text(r.stdout),
                        re.M) is not None and
              re.search(r"^free +\S+ \S+ \(%d pages?\)$" % after["free_pages"], text(r.stdout),
                        re.M) is not None, text(r.stdout))


def run_on_terminal(binary, args):
    """Runs with stderr on a pseudo-terminal; returns (exit, stdout, terminal output)."""
    master, slave = pty.openpty()
    try:
        # A terminal that can redraw a line, whatever TERM the tests run with.
        proc = subprocess.Popen([binary] + args, env=clean_env({"TERM": "xterm"}),
                                stdout=subprocess.PIPE,
                                stderr=slave, stdin=subprocess.DEVNULL)
    finally:
        os.close(slave)
    seen = bytearray()

    def drain():
        while True:
            try:
                ready, _, _ = select.select([master], [], [], TIMEOUT_S)
                if not ready:
                    return
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    reader.join(TIMEOUT_S)
    os.close(master)
    return proc.returncode, stdout, text(bytes(seen))


def check_progress(binary, fixture_bin, tmp):
    big = os.path.join(tmp, "big")
    fixture(fixture_bin, big, "populate")
    fixture(fixture_bin, big, "bulk", str(PROGRESS_ENTRIES))
    small = os.path.join(tmp, "small")
    fixture(fixture_bin, small, "populate")
    bar = re.compile(r"\r(verify|purge|compact) \[[#-]{30}\] +\d+% ")

    for name, big_args, small_args in (
            ("verify", ["verify"], ["verify"]),
            ("compact", ["compact", os.path.join(tmp, "big-copy-%d")],
             ["compact", os.path.join(tmp, "small-copy")])):
        piped = [a.replace("%d", "1") for a in big_args]
        r = run(binary, piped + ["--dir", big])
        check("%s on a big cache, stderr piped: no progress output" % name,
              r.returncode == 0 and r.stderr == b"", text(r.stderr))
        code, _, seen = run_on_terminal(binary, [a.replace("%d", "2") for a in big_args] +
                                        ["--dir", big])
        check("%s on a big cache, stderr a terminal: a progress bar, erased at the end" % name,
              code == 0 and bar.search(seen) is not None and
              re.search(r"\r +\r$", seen) is not None,
              repr(seen))
        code, _, seen = run_on_terminal(binary, small_args + ["--dir", small])
        check("%s on a small cache, stderr a terminal: no progress bar" % name,
              code == 0 and seen == "", repr(seen))

    # purge last: it removes the bulk entries (they are expired).
    code, stdout, seen = run_on_terminal(binary, ["purge", "--dir", big])
    check("purge on a big cache, stderr a terminal: a progress bar",
          code == 0 and bar.search(seen) is not None and
          ("removed %d expired" % (PROGRESS_ENTRIES + 2)) in text(stdout),
          repr(seen) + text(stdout))


def main(argv):
    update = "--update" in argv
    args = [a for a in argv[1:] if a != "--update"]
    if len(args) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    binary = os.path.abspath(args[0])
    golden_dir = os.path.abspath(args[1])
    if len(args) == 3:
        fixture_bin = os.path.abspath(args[2])
    else:
        fixture_bin = os.path.join(os.path.dirname(os.path.dirname(binary)), "tests",
                                   "cli_golden_fixture")
    if not os.access(fixture_bin, os.X_OK):
        sys.stderr.write("cli_golden_test: no fixture program at %s\n" % fixture_bin)
        return 1

    with tempfile.TemporaryDirectory(prefix="dogpile-golden-") as tmp:
        run_cases(binary, golden_dir, fixture_bin, tmp, update)
        if not update:
            check_values(binary, fixture_bin, tmp)
            check_progress(binary, fixture_bin, tmp)

    return report("cli_golden_test", " (golden files updated)" if update else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
