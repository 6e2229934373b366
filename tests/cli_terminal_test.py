#!/usr/bin/env python3
"""The dogpile command on a real pseudo-terminal: its progress bars.

Usage: cli_terminal_test.py path/to/dogpile path/to/cli_golden_fixture

Checks that compact's bar counts to the size the copy has and shows 100% only
when the copy is done; that no bar is drawn when TERM is dumb, unset or empty,
or when stderr is not a terminal; and that a signal during verify, compact or
purge blanks the bar's line before the process ends by that signal (and
compact's partial copy goes). The caches are written by cli_golden_fixture
("bulk" entries, all expired) in a temporary directory.
"""
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

from checks import check, report

TIMEOUT_S = 60
BIG_ENTRIES = 200000   # verify takes most of a second: time to interrupt it
SHRUNK_BEFORE = 60000  # written, then purged: free pages a compacted copy leaves out
SHRUNK_AFTER = 6000    # above the CLI's 5,000-entry progress threshold

AMOUNT = r"\d+(?:\.\d+)? (?:B|[KMGTPE]iB)|\d+"
FRAME = re.compile(r"\r(compact|verify|purge) \[([#-]{30})\] +(\d+)%% (%s)/(%s) *" %
                   (AMOUNT, AMOUNT))


def environment(term="xterm"):
    """The test's environment with TERM set to `term` (None: unset)."""
    env = dict(os.environ)
    for var in ("DOGPILE_DIR", "XDG_CACHE_HOME", "TERM"):
        env.pop(var, None)
    if term is not None:
        env["TERM"] = term
    return env


def last_line(shown):
    """What a terminal's last line holds after `shown`: carriage returns, line
    feeds, erase-line and printable characters are understood."""
    line, col, i = [], 0, 0
    while i < len(shown):
        if shown.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = shown[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            line, col = [], 0
        else:
            line.extend(" " * (col + 1 - len(line)))
            line[col] = ch
            col += 1
        i += 1
    return "".join(line)


def on_terminal(binary, args, env, stop_with=None, ignoring=None):
    """Runs with stderr on a new pseudo-terminal (stdout a pipe), and signal
    `ignoring` ignored, as nohup does. With `stop_with`, sends that signal
    once a bar frame has been shown. Returns (exit, stdout, terminal output,
    whether the signal was sent while it ran)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([binary] + args, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave,
                                preexec_fn=ignoring and (
                                    lambda: signal.signal(ignoring, signal.SIG_IGN)))
    finally:
        os.close(slave)
    seen = b""
    signalled = False
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process has closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if stop_with is not None and not signalled and FRAME.search(seen.decode()):
            signalled = proc.poll() is None
            proc.send_signal(stop_with)
    os.close(master)
    stdout, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, stdout.decode(), seen.decode(), signalled


def fixture(fixture_bin, cache, *args):
    subprocess.run([fixture_bin, cache] + list(args), check=True, timeout=TIMEOUT_S)


def check_compact_bar(binary, shrunk, tmp):
    dest = os.path.join(tmp, "shrunk-copy")
    code, stdout, shown, _ = on_terminal(binary, ["compact", "--dir", shrunk, dest],
                                         environment())
    frames = FRAME.findall(shown)
    detail = repr(shown) + "\n" + stdout
    if not check("compact on a terminal: draws a bar", code == 0 and frames, detail):
        return
    percents = [int(f[2]) for f in frames]
    copied = re.search(r"data\.mdb (%s) " % AMOUNT, stdout)
    check("compact's bar: its total is the size of the copy, from the first frame",
          copied is not None and all(f[4] == copied.group(1) for f in frames), detail)
    check("compact's bar: reaches 100%, all of it, at the end",
          percents[-1] == 100 and frames[-1][1] == "#" * 30 and frames[-1][3] == frames[-1][4],
          detail)
    check("compact's bar: shows 100% only at the end, never going back",
          all(p < 100 for p in percents[:-1]) and percents == sorted(percents), detail)
    check("compact's bar: its line is blank when it is done", last_line(shown).strip() == "",
          detail)


def check_no_bar(binary, shrunk):
    r = on_terminal(binary, ["verify", "--dir", shrunk], environment())
    check("verify with TERM=xterm: a bar (the cases below mean something)",
          r[0] == 0 and FRAME.search(r[2]) is not None, repr(r[2]))
    for label, term in (("TERM=dumb", "dumb"), ("TERM unset", None), ("TERM empty", "")):
        code, _, shown, _ = on_terminal(binary, ["verify", "--dir", shrunk], environment(term))
        check("verify with %s: nothing on the terminal" % label, code == 0 and shown == "",
              repr(shown))
    # stdin and stdout on a terminal, stderr a pipe.
    master, slave = pty.openpty()
    r = subprocess.run([binary, "verify", "--dir", shrunk], env=environment(), stdin=slave,
                       stdout=slave, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    os.close(slave)
    os.close(master)
    check("verify with stderr a pipe: nothing on stderr", r.returncode == 0 and r.stderr == b"",
          repr(r.stderr))


def check_interrupted(binary, big, tmp):
    # Started ignoring SIGHUP (nohup), a command keeps ignoring it.
    dest = os.path.join(tmp, "big-copy-nohup")
    code, stdout, shown, signalled = on_terminal(binary, ["compact", "--dir", big, dest],
                                                 environment(), stop_with=signal.SIGHUP,
                                                 ignoring=signal.SIGHUP)
    check("compact under nohup, SIGHUP while its bar is shown: carries on to the end",
          signalled and code == 0 and os.path.exists(os.path.join(dest, "data.mdb")) and
          last_line(shown).strip() == "", "exit %s, %r" % (code, shown))

    dest = os.path.join(tmp, "big-copy")
    staging = os.path.join(tmp, ".big-copy.compacting")
    # purge last: it removes the entries.
    for name, args, sig in (("verify", ["verify"], signal.SIGINT),
                            ("compact", ["compact", dest], signal.SIGINT),
                            ("purge", ["purge"], signal.SIGTERM)):
        code, stdout, shown, signalled = on_terminal(binary, args + ["--dir", big], environment(),
                                                     stop_with=sig)
        label = "%s, %s while its bar is shown" % (name, signal.Signals(sig).name)
        detail = "exit %s, %r" % (code, shown)
        if not check(label + ": the signal came while it ran", signalled, detail):
            continue
        check(label + ": ends by that signal", code == -sig, detail)
        check(label + ": the terminal's line is blank", last_line(shown).strip() == "", detail)
        check(label + ": printed no report", stdout == "", stdout)
    check("compact, SIGINT: no partial copy stays",
          not os.path.exists(dest) and not os.path.exists(staging))


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    binary = os.path.abspath(argv[1])
    fixture_bin = os.path.abspath(argv[2])
    with tempfile.TemporaryDirectory(prefix="dogpile-terminal-") as tmp:
        shrunk = os.path.join(tmp, "shrunk")
        fixture(fixture_bin, shrunk, "bulk", str(SHRUNK_BEFORE))
        subprocess.run([binary, "purge", "--dir", shrunk], env=environment(), check=True,
                       stdout=subprocess.DEVNULL, timeout=TIMEOUT_S)
        fixture(fixture_bin, shrunk, "bulk", str(SHRUNK_AFTER))
        big = os.path.join(tmp, "big")
        fixture(fixture_bin, big, "bulk", str(BIG_ENTRIES))

        check_compact_bar(binary, shrunk, tmp)
        check_no_bar(binary, shrunk)
        check_interrupted(binary, big, tmp)

    return report("cli_terminal_test")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
