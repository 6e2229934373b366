#!/usr/bin/env python3
"""End-to-end checks of `dogpile exec`.

Usage: exec_test.py path/to/dogpile

Runs the binary as a user would, on fresh temporary cache directories (never
the user's own cache), and prints one line per check. Exits 1 when any check
failed.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

TIMEOUT_S = 120
JSON_KEYS = {"key", "cached", "stale", "created_at", "exit_code", "signal", "stdout", "stderr"}
ISO_8601 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

BINARY = os.path.abspath(sys.argv[1])
failures = 0


def check(name, condition, detail=""):
    global failures
    if condition:
        print("ok   " + name)
    else:
        failures += 1
        print("FAIL " + name + (": " + detail if detail else ""))
    return condition


def clean_env(extra=None, home=None):
    env = dict(os.environ)
    # Keep every run away from the user's cache, whatever the test sets.
    for var in ("DOGPILE_DIR", "XDG_CACHE_HOME"):
        env.pop(var, None)
    env["HOME"] = home or tempfile.gettempdir() + "/dogpile-exec-test-no-home"
    env.update(extra or {})
    return env


def dogpile(cache, *args, stdin=b"", cwd=None, env=None, options=()):
    """Runs `dogpile exec --dir cache [options] -- args...`; returns CompletedProcess (bytes)."""
    argv = [BINARY, "exec", "--dir", cache] + list(options) + ["--"] + list(args)
    return subprocess.run(argv, input=stdin, capture_output=True, cwd=cwd,
                          env=clean_env(env), timeout=TIMEOUT_S)


def as_json(result):
    return json.loads(result.stdout.decode("utf-8"))


def show(result):
    return "exit %d, stdout %r, stderr %r" % (result.returncode, result.stdout[:300],
                                              result.stderr[:300])


def lines(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return f.read().decode().splitlines()


def wait_until(condition, limit_s=30.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def counter_script(log, extra=""):
    """A command that logs each run and prints which run it is: v0, v1, ..."""
    return ["sh", "-c", "n=$(cat '%s' 2>/dev/null | wc -l); echo run$n >> '%s'; %s echo v$n"
            % (log, log, extra)]


def test_concurrent(work):
    cache = os.path.join(work, "cache")
    log = os.path.join(work, "log")
    gate = os.path.join(work, "gate")
    script = "echo run >> '%s'; sleep 1; echo out; echo err >&2; exit 3" % log
    # Each waits at the gate, then becomes dogpile: all 16 start together.
    procs = []
    for _ in range(16):
        launcher = ("while [ ! -e '%s' ]; do sleep 0.005; done; exec \"$@\"" % gate)
        procs.append(subprocess.Popen(
            ["sh", "-c", launcher, "sh", BINARY, "exec", "--dir", cache, "--", "sh", "-c",
             script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=clean_env()))
    open(gate, "w").close()
    results = [(p.returncode, out, err) for p in procs
               for out, err in [p.communicate(timeout=TIMEOUT_S)]]
    check("16 concurrent invocations run the command once", lines(log) == ["run"],
          "log: %r" % lines(log))
    bad = [r for r in results if r != (3, b"out\n", b"err\n")]
    check("16 concurrent invocations all print out/err and exit 3", not bad, repr(bad[:3]))


def test_bytes(work):
    cache = os.path.join(work, "cache")
    log = os.path.join(work, "log")
    blob = os.path.join(work, "blob")
    data = bytes(range(256)) * 64 + b"\0" * 1000 + bytes(range(255, -1, -1))
    with open(blob, "wb") as f:
        f.write(data)
    cmd = ["sh", "-c", "echo run >> '%s'; cat '%s'; cat '%s' >&2; exit 5" % (log, blob, blob)]
    first = dogpile(cache, *cmd)
    second = dogpile(cache, *cmd)
    check("binary output: first run passes every byte through",
          first.stdout == data and first.stderr == data and first.returncode == 5, show(first))
    check("binary output: replay is byte for byte (NUL and all 256 values)",
          second.stdout == data and second.stderr == data and second.returncode == 5
          and lines(log) == ["run"], show(second))

    big = os.path.join(work, "big")
    big_data = os.urandom(50 * 1024 * 1024)
    with open(big, "wb") as f:
        f.write(big_data)
    cmd = ["sh", "-c", "echo run >> '%s'; cat '%s'; echo tail >&2" % (log, big)]
    first = dogpile(cache, *cmd)
    second = dogpile(cache, *cmd)
    check("50 MiB output round-trips (first run)",
          first.returncode == 0 and first.stdout == big_data and first.stderr == b"tail\n",
          "exit %d, %d bytes" % (first.returncode, len(first.stdout)))
    check("50 MiB output round-trips (replay)",
          second.returncode == 0 and second.stdout == big_data and second.stderr == b"tail\n"
          and lines(log) == ["run", "run"],
          "exit %d, %d bytes, log %r" % (second.returncode, len(second.stdout), lines(log)))


def test_stale(work):
    cache = os.path.join(work, "cache")
    log = os.path.join(work, "log")
    gate = os.path.join(work, "gate")
    # A run after the first waits at the gate: while it is closed, a caller
    # that waited for the refresh could never finish.
    cmd = counter_script(log, "[ $n = 0 ] || while [ ! -e '%s' ]; do sleep 0.01; done;" % gate)
    # bkt's meaning: older than --stale (and younger than --ttl) is served
    # at once and refreshed in the background.
    opts = ["--ttl", "10m", "--stale", "3s"]
    first = dogpile(cache, *cmd, options=opts)
    check("--stale: first run", first.stdout == b"v0\n", show(first))
    time.sleep(3.2)  # past --stale, well inside --ttl

    procs = [subprocess.Popen([BINARY, "exec", "--dir", cache] + opts + ["--"] + cmd,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=clean_env())
             for _ in range(8)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            out = b"(waited for the refresh)"
        outs.append((p.returncode, out, err))
    check("--stale: 8 concurrent callers get the old output without waiting for the refresh",
          all(o == (0, b"v0\n", b"") for o in outs), repr(outs[:3]))
    check("--stale: the refresh started in the background",
          wait_until(lambda: "run1" in lines(log)), repr(lines(log)))
    open(gate, "w").close()

    def refreshed():
        r = dogpile(cache, *cmd, options=opts + ["--json"])
        return r.returncode == 0 and as_json(r)["stdout"] == "v1\n"
    check("--stale: later invocations see the refreshed output", wait_until(refreshed))
    # A second refresh would start from a stale value only, i.e. not within the 3 s.
    check("--stale: exactly one refresh ran", lines(log) == ["run0", "run1"], repr(lines(log)))
    plain = dogpile(cache, *cmd, options=opts)
    check("--stale: replay after the refresh", plain.stdout == b"v1\n", show(plain))


def test_ttl_force_warm(work):
    cache = os.path.join(work, "cache")
    log = os.path.join(work, "ttl-log")
    cmd = counter_script(log)
    a = as_json(dogpile(cache, *cmd, options=["--ttl", "1s", "--json"]))
    b = as_json(dogpile(cache, *cmd, options=["--ttl", "1s", "--json"]))
    time.sleep(1.1)
    c = as_json(dogpile(cache, *cmd, options=["--ttl", "1s", "--json"]))
    check("--ttl: fresh results are replayed",
          (a["stdout"], a["cached"], b["stdout"], b["cached"]) == ("v0\n", False, "v0\n", True),
          repr((a, b)))
    check("--ttl: old results are regenerated", (c["stdout"], c["cached"]) == ("v1\n", False),
          repr(c))
    d = dogpile(cache, *cmd)
    check("no --ttl: any stored result is replayed", d.stdout == b"v1\n", show(d))

    # The longest durations there are never wrap into an expiry in the past
    # (which would cache nothing).
    log = os.path.join(work, "long-log")
    cmd = counter_script(log)
    longest = ["--ttl", "106751d", "--stale", "106750d", "--json"]
    first = as_json(dogpile(cache, *cmd, options=longest))
    second = as_json(dogpile(cache, *cmd, options=longest))
    check("--ttl 106751d --stale 106750d: the result is cached",
          (first["cached"], second["cached"], second["stale"], lines(log)) ==
          (False, True, False, ["run0"]), repr((first, second, lines(log))))
    too_long = dogpile(cache, *cmd, options=["--ttl", "106752d"])
    check("--ttl past 2^63 ns is a usage error naming it",
          too_long.returncode == 2 and b"106752d" in too_long.stderr, show(too_long))

    log = os.path.join(work, "force-log")
    cmd = counter_script(log)
    dogpile(cache, *cmd)
    forced = dogpile(cache, *cmd, options=["--force"])
    after = dogpile(cache, *cmd)
    check("--force reruns and prints the new output", forced.stdout == b"v1\n", show(forced))
    check("--force stores what it ran", after.stdout == b"v1\n" and len(lines(log)) == 2,
          show(after))

    log = os.path.join(work, "warm-log")
    cmd = counter_script(log)
    warm = dogpile(cache, *cmd, options=["--warm"])
    check("--warm prints nothing and exits 0",
          (warm.returncode, warm.stdout, warm.stderr) == (0, b"", b""), show(warm))
    # Waits for the warm run's lock if it is still running.
    r = dogpile(cache, *cmd)
    check("--warm fills an empty cache", r.stdout == b"v0\n" and lines(log) == ["run0"],
          show(r) + " log %r" % lines(log))
    warm = dogpile(cache, *cmd, options=["--warm"])
    check("--warm with a stored result prints nothing", (warm.stdout, warm.stderr) == (b"", b""),
          show(warm))
    check("--warm refreshes a stored result",
          wait_until(lambda: dogpile(cache, *cmd).stdout == b"v1\n"), repr(lines(log)))


def test_failures(work):
    cache = os.path.join(work, "cache")
    log = os.path.join(work, "fail-log")
    cmd = ["sh", "-c", "echo run >> '%s'; echo failed >&2; exit 4" % log]
    r1 = dogpile(cache, *cmd, options=["--discard-failures"])
    r2 = dogpile(cache, *cmd, options=["--discard-failures"])
    check("--discard-failures prints a failing run",
          (r1.returncode, r1.stderr) == (4, b"failed\n"), show(r1))
    check("--discard-failures does not cache it",
          r2.returncode == 4 and len(lines(log)) == 2, repr(lines(log)))
    r3 = dogpile(cache, *cmd)
    r4 = dogpile(cache, *cmd)
    check("failures are cached without --discard-failures",
          r3.returncode == 4 and r4.returncode == 4 and len(lines(log)) == 3, repr(lines(log)))

    log = os.path.join(work, "kill-log")
    cmd = ["sh", "-c", "echo run >> '%s'; echo partial; kill -KILL $$" % log]
    killed = dogpile(cache, *cmd)
    check("a signal death exits 128+signal with its output",
          (killed.returncode, killed.stdout) == (137, b"partial\n"), show(killed))
    again = as_json(dogpile(cache, *cmd, options=["--json"]))
    check("a signal death is not cached; --json reports the signal",
          (again["signal"], again["exit_code"], again["cached"], len(lines(log)))
          == (9, 137, False, 2), repr(again))
    dogpile(cache, *cmd, options=["--cache-signals"])
    kept = dogpile(cache, *cmd, options=["--cache-signals"])
    check("--cache-signals caches it; it replays as 128+signal",
          (kept.returncode, kept.stdout, len(lines(log))) == (137, b"partial\n", 3), show(kept))

    missing = dogpile(cache, os.path.join(work, "no-such-command"), "x")
    check("a missing command exits 127 with a message",
          missing.returncode == 127 and b"no-such-command" in missing.stderr
          and missing.stdout == b"", show(missing))
    missing = dogpile(cache, "dogpile-no-such-command-in-path")
    check("a command missing from PATH exits 127", missing.returncode == 127, show(missing))
    script = os.path.join(work, "later")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho created\n")
    os.chmod(script, 0o600)
    r = dogpile(cache, script)
    check("a command that is not executable exits 126", r.returncode == 126, show(r))
    os.chmod(script, 0o700)
    r = dogpile(cache, script)
    check("a command that could not run was not cached",
          (r.returncode, r.stdout) == (0, b"created\n"), show(r))


def test_key_parts(work):
    cache = os.path.join(work, "cache")
    one = os.path.join(work, "one")
    two = os.path.join(work, "two")
    os.makedirs(one)
    os.makedirs(two)
    log = os.path.join(work, "cwd-log")
    cmd = counter_script(log)
    a = dogpile(cache, *cmd, cwd=one).stdout
    b = dogpile(cache, *cmd, cwd=two).stdout
    check("without --cwd the working directory is not in the key", (a, b) == (b"v0\n", b"v0\n"))
    a = dogpile(cache, *cmd, cwd=one, options=["--cwd"]).stdout
    b = dogpile(cache, *cmd, cwd=two, options=["--cwd"]).stdout
    c = dogpile(cache, *cmd, cwd=one, options=["--cwd"]).stdout
    check("--cwd separates working directories", (a, b, c) == (b"v1\n", b"v2\n", b"v1\n"),
          repr((a, b, c)))

    log = os.path.join(work, "env-log")
    cmd = counter_script(log)
    outs = [dogpile(cache, *cmd, env=env, options=opts).stdout for env, opts in [
        ({"DP_X": "1"}, ["--env", "DP_X"]),
        ({"DP_X": "2"}, ["--env", "DP_X"]),
        ({"DP_X": "1"}, ["--env", "DP_X"]),
        ({"DP_X": ""}, ["--env", "DP_X"]),
        ({}, ["--env", "DP_X"]),
        ({"DP_X": "1", "DP_Y": "a"}, ["--env", "DP_Y", "--env", "DP_X"]),
        ({"DP_X": "1", "DP_Y": "a"}, ["--env", "DP_X", "--env", "DP_Y"]),
        ({"DP_X": "9", "DP_Y": "a"}, ["--env", "DP_Y"]),
        ({"DP_X": "8", "DP_Y": "a"}, ["--env", "DP_Y"]),
    ]]
    check("--env: a named variable's value is in the key; unset differs from empty",
          outs[:5] == [b"v0\n", b"v1\n", b"v0\n", b"v2\n", b"v3\n"], repr(outs))
    check("--env: order of names does not matter",
          outs[5:7] == [b"v4\n", b"v4\n"], repr(outs))
    check("--env: other variables are not in the key", outs[7:] == [b"v5\n", b"v5\n"],
          repr(outs))

    log = os.path.join(work, "modtime-log")
    cmd = counter_script(log)
    src = os.path.join(work, "input.txt")
    with open(src, "w") as f:
        f.write("one")
    os.utime(src, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    opts = ["--modtime", src]
    a = dogpile(cache, *cmd, options=opts).stdout
    b = dogpile(cache, *cmd, options=opts).stdout
    os.utime(src, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    c = dogpile(cache, *cmd, options=opts).stdout
    os.remove(src)
    d = dogpile(cache, *cmd, options=opts).stdout
    e = dogpile(cache, *cmd).stdout
    check("--modtime: an unchanged file keeps the key", (a, b) == (b"v0\n", b"v0\n"))
    check("--modtime: a new mtime changes the key", c == b"v1\n", repr(c))
    check("--modtime: a missing file is a key of its own", d == b"v2\n", repr(d))
    check("--modtime: without it files are not in the key", e == b"v3\n", repr(e))

    log = os.path.join(work, "scope-log")
    cmd = counter_script(log)
    outs = [as_json(dogpile(cache, *cmd, options=["--json"] + o)) for o in
            [["--scope", "a"], ["--scope", "b"], ["--scope", "a"], []]]
    check("--scope separates results", [o["stdout"] for o in outs] == ["v0\n", "v1\n", "v0\n",
                                                                       "v2\n"], repr(outs))
    check("--scope prefixes the key",
          outs[0]["key"].startswith("a/") and outs[1]["key"].startswith("b/")
          and re.fullmatch(r"[0-9a-f]{32}", outs[3]["key"]) is not None
          and outs[0]["key"][2:] != outs[3]["key"], repr([o["key"] for o in outs]))


def test_json_and_cli(work):
    cache = os.path.join(work, "cache")
    cmd = ["sh", "-c", r"printf 'ok \303\251 \377\000\001\n\t\042\134'; printf 'err' >&2; exit 2"]
    r = dogpile(cache, *cmd, options=["--json"])
    ok = check("--json prints one JSON object and exits 0",
               r.returncode == 0 and r.stdout.endswith(b"}\n") and r.stdout.count(b"\n") == 1,
               show(r))
    if ok:
        doc = as_json(r)
        check("--json has exactly the documented fields", set(doc) == JSON_KEYS, repr(doc))
        check("--json values", (doc["exit_code"], doc["signal"], doc["cached"], doc["stale"],
                                doc["stderr"]) == (2, None, False, False, "err"), repr(doc))
        check("--json created_at is ISO 8601 UTC",
              isinstance(doc["created_at"], str) and ISO_8601.match(doc["created_at"]),
              repr(doc["created_at"]))
        check("--json: UTF-8 kept, other bytes as \\u00XX, controls escaped",
              doc["stdout"] == "ok \u00e9 \u00ff\u0000\u0001\n\t\"\\"
              and b"\\u00ff\\u0000\\u0001\\n\\t\\\"\\\\" in r.stdout
              and "ok é".encode() in r.stdout, repr(r.stdout))
        again = as_json(dogpile(cache, *cmd, options=["--json"]))
        check("--json on a replay: cached, same created_at and output",
              again["cached"] and again["created_at"] == doc["created_at"]
              and again["stdout"] == doc["stdout"] and again["key"] == doc["key"], repr(again))
    replay = dogpile(cache, *cmd)
    check("the same entry replays as bytes",
          replay.stdout == b"ok \xc3\xa9 \xff\x00\x01\n\t\"\\" and replay.returncode == 2,
          show(replay))

    r = dogpile(cache, "cat", stdin=b"from stdin\n")
    check("the command reads the caller's stdin", r.stdout == b"from stdin\n", show(r))
    r = dogpile(cache, "true", options=["--ttl", "1h30m", "--stale", "2d"])
    check("--stale not shorter than --ttl is a usage error naming both",
          r.returncode == 2 and b"--stale 2d" in r.stderr and b"--ttl 1h30m" in r.stderr, show(r))
    r = dogpile(cache, "true", options=["--ttl", "1h30x"])
    check("a bad duration is a usage error quoting it",
          r.returncode == 2 and b"'1h30x'" in r.stderr, show(r))
    r = dogpile(cache, "echo", "durations", options=["--ttl", "1w", "--stale", "1h30m"])
    check("humantime durations are accepted", (r.returncode, r.stdout) == (0, b"durations\n"),
          show(r))
    r = subprocess.run([BINARY, "exec", "--dir", cache, "printf", "%s|", "--json", "--ttl",
                        "x"], capture_output=True, env=clean_env(), timeout=TIMEOUT_S)
    check("options after the command name belong to the command",
          (r.returncode, r.stdout) == (0, b"--json|--ttl|x|"), show(r))

    usage = [
        ["exec", "--dir", cache, "(no command)"],
        ["exec", "--dir", cache, "--", "(no command)"],
        ["exec", "--dir", cache, "--stale", "5s", "--", "true"],
        ["exec", "--dir", cache, "--ttl", "soon", "--", "true"],
        ["exec", "--dir", cache, "--ttl", "0s", "--", "true"],
        ["exec", "--dir", cache, "--warm", "--force", "--", "true"],
        ["exec", "--dir", cache, "--warm", "--json", "--", "true"],
        ["exec", "--dir", cache, "--bogus", "--", "true"],
        ["exec", "--dir", cache, "--env", "A=B", "--", "true"],
        ["exec", "--dir", cache, "--env", "", "--", "true"],
        ["exec", "--dir", cache, "--max-output", "1GiB", "--", "true"],
        ["exec", "--dir", cache, "--max-input", "lots", "--", "true"],
    ]
    for args in usage:
        argv = [a for a in args if a != "(no command)"]
        r = subprocess.run([BINARY] + argv, capture_output=True, env=clean_env(),
                           timeout=TIMEOUT_S)
        check("usage error exits 2: " + " ".join(args[3:]),
              r.returncode == 2 and r.stderr.startswith(b"dogpile: "), show(r))
        if "A=B" in args:
            check("--env A=B names the value", b"'A=B' is not a variable name" in r.stderr,
                  show(r))

    not_dir = os.path.join(work, "a-file")
    with open(not_dir, "w") as f:
        f.write("x")
    r = dogpile(not_dir, "true")
    check("a cache directory that cannot be opened exits 3 naming it",
          r.returncode == 3 and not_dir.encode() in r.stderr, show(r))

    r = subprocess.run([BINARY, "exec", "--help"], capture_output=True, env=clean_env(),
                       timeout=TIMEOUT_S)
    check("--help exits 0 with an example",
          r.returncode == 0 and b"Examples:" in r.stdout and b"dogpile exec --ttl" in r.stdout,
          show(r))

    env_dir = os.path.join(work, "from-env")
    r = subprocess.run([BINARY, "exec", "--", "echo", "hi"], capture_output=True,
                       env=clean_env({"DOGPILE_DIR": env_dir}), timeout=TIMEOUT_S)
    check("without --dir the cache is $DOGPILE_DIR",
          r.stdout == b"hi\n" and os.path.exists(os.path.join(env_dir, "data.mdb")), show(r))


def shell(script, env=None):
    """Runs a shell pipeline with $DP for the binary; returns CompletedProcess (bytes)."""
    return subprocess.run(["sh", "-c", script], capture_output=True, stdin=subprocess.DEVNULL,
                          env=clean_env(dict(env or {}, DP=BINARY)), timeout=TIMEOUT_S)


def test_stdin(work):
    cache = os.path.join(work, "cache")
    a = shell("echo a | \"$DP\" exec --dir '%s' -- wc -c" % cache)
    b = shell("echo abcdef | \"$DP\" exec --dir '%s' -- wc -c" % cache)
    c = shell("echo a | \"$DP\" exec --dir '%s' --json -- wc -c" % cache)
    check("stdin from a pipe is part of the key",
          (a.stdout, b.stdout) == (b"2\n", b"7\n"), show(a) + " / " + show(b))
    check("the same stdin replays", as_json(c)["cached"] and as_json(c)["stdout"].strip() == "2",
          show(c))
    src = os.path.join(work, "input")
    with open(src, "wb") as f:
        f.write(b"abcdef\n")
    d = shell("\"$DP\" exec --dir '%s' --json -- wc -c < '%s'" % (cache, src))
    check("a file on stdin with the same bytes is the same key",
          as_json(d)["cached"] and as_json(d)["stdout"].strip() == "7", show(d))
    e = shell("\"$DP\" exec --dir '%s' -- wc -c < /dev/null" % cache)
    f = shell("echo ignored | \"$DP\" exec --dir '%s' --ignore-stdin --json -- wc -c" % cache)
    check("/dev/null is not read; --ignore-stdin keys without stdin",
          e.stdout.strip() == b"0" and as_json(f)["cached"]
          and as_json(f)["stdout"].strip() == "0", show(e) + " / " + show(f))
    g = shell("echo fresh | \"$DP\" exec --dir '%s' --ignore-stdin -- cat" % cache)
    check("--ignore-stdin passes stdin to the command", g.stdout == b"fresh\n", show(g))

    log = os.path.join(work, "big-log")
    script = "head -c 3000000 /dev/zero | \"$DP\" exec --dir '%s' --max-input 1MiB -- " \
             "sh -c 'echo run >> %s; wc -c'" % (cache, log)
    h1 = shell(script)
    h2 = shell(script)
    check("stdin past --max-input: the command reads all of it, uncached",
          (h1.returncode, h1.stdout.strip(), h2.stdout.strip(), len(lines(log)))
          == (0, b"3000000", b"3000000", 2), show(h1) + " / " + show(h2))


def test_limits(work):
    cache = os.path.join(work, "cache")
    # `yes` never ends; with the default limit the output streams once it
    # passes 256 MiB, the reader leaves, and `yes` dies of SIGPIPE.
    proc = subprocess.Popen([BINARY, "exec", "--dir", cache, "--", "yes"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=clean_env())
    head = proc.stdout.read(20)
    proc.stdout.close()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        code, usage = None, None
    proc.returncode = code
    check("exec -- yes | head -c 20: ends with the command's status (SIGPIPE, 141)",
          head == b"y\n" * 10 and code == 141, "head %r, exit %r" % (head, code))
    check("exec -- yes: memory stays bounded (< 1 GiB resident)",
          usage is not None and usage.ru_maxrss < 1024 * 1024, "maxrss %r KiB"
          % (usage.ru_maxrss if usage else None))

    log = os.path.join(work, "big-log")
    cmd = ["sh", "-c", "echo run >> '%s'; head -c 100000 /dev/zero | tr '\\0' o; echo err >&2; "
           "exit 4" % log]
    r1 = dogpile(cache, *cmd, options=["--max-output", "10KiB"])
    r2 = dogpile(cache, *cmd, options=["--max-output", "10KiB"])
    check("output past --max-output streams through whole, with the command's status",
          (r1.returncode, r1.stdout, r1.stderr) == (4, b"o" * 100000, b"err\n"), show(r1))
    check("output past --max-output is not cached", r2.returncode == 4 and len(lines(log)) == 2,
          repr(lines(log)))
    j = dogpile(cache, *cmd, options=["--max-output", "10KiB", "--json"])
    check("--json with output past --max-output: exit 3 naming the limit, nothing on stdout",
          j.returncode == 3 and j.stdout == b"" and b"--max-output" in j.stderr, show(j))
    r3 = dogpile(cache, *cmd)
    r4 = dogpile(cache, *cmd)
    check("within the default limit the same output is cached",
          r4.stdout == b"o" * 100000 and len(lines(log)) == 4, repr(lines(log)))


def main():
    with tempfile.TemporaryDirectory(prefix="dogpile-exec-test-") as root:
        for test in (test_concurrent, test_bytes, test_stale, test_ttl_force_warm,
                     test_failures, test_key_parts, test_json_and_cli, test_stdin,
                     test_limits):
            work = os.path.join(root, test.__name__)
            os.makedirs(work)
            try:
                test(work)
            except Exception as e:  # a crash is a failed check, and the rest still run
                check(test.__name__ + " completed", False, "%s: %s" % (type(e).__name__, e))
    print("%s: %d failed" % ("FAIL" if failures else "PASS", failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
