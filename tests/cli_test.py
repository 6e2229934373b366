#!/usr/bin/env python3
"""End-to-end checks of the dogpile command.

Usage: cli_test.py path/to/dogpile [VERSION [LMDB-VERSION CEREAL-VERSION]]

The versions, when given, are what `dogpile --version` must print.

Runs the binary as a user would: flags, exit codes, and `dogpile demo` on
fresh temporary cache directories (never the user's own cache).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from checks import check, report

TIMEOUT_S = 300
KEY_ROW = re.compile(r"^(demo:\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s")
CODEC_ROW = re.compile(
    r"\b(raw|binary|portable_binary|json)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s*$")


def run(binary, args, env_extra=None, home=None):
    env = dict(os.environ)
    # Keep every run away from the user's cache, whatever the test sets.
    for var in ("DOGPILE_DIR", "XDG_CACHE_HOME"):
        env.pop(var, None)
    if home is not None:
        env["HOME"] = home
    env.update(env_extra or {})
    return subprocess.run([binary] + args, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def show(result):
    return "exit %d\n--- stdout\n%s--- stderr\n%s" % (result.returncode, result.stdout,
                                                     result.stderr)


def key_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        m = KEY_ROW.match(line)
        if m:
            rows[m.group(1)] = {"creations": int(m.group(2)), "hits": int(m.group(3)),
                                "waits": int(m.group(4))}
    return rows


def codec_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        m = CODEC_ROW.search(line)
        # The first table rows are the sample record's.
        if m and m.group(1) not in rows:
            rows[m.group(1)] = {"payload": int(m.group(2)), "stored": int(m.group(3))}
    return rows


def check_demo_pair(binary, label, args, env_extra, home, keys):
    cold = run(binary, ["demo"] + args, env_extra, home)
    if not check(label + ": cold run exits 0", cold.returncode == 0, show(cold)):
        return
    rows = key_rows(cold.stdout)
    check(label + ": cold run reports every key", len(rows) == keys, show(cold))
    check(label + ": cold run creates each key exactly once",
          rows and all(r["creations"] == 1 for r in rows.values()), show(cold))
    check(label + ": cold run says all checks passed", "checks: all passed" in cold.stdout,
          show(cold))

    codecs = codec_rows(cold.stdout)
    for name in ("binary", "portable_binary", "json"):
        row = codecs.get(name)
        check(label + ": codec table lists " + name,
              row is not None and row["payload"] > 0 and row["stored"] > row["payload"],
              show(cold))

    warm = run(binary, ["demo"] + args, env_extra, home)
    if not check(label + ": warm run exits 0", warm.returncode == 0, show(warm)):
        return
    rows = key_rows(warm.stdout)
    check(label + ": warm run reports every key", len(rows) == keys, show(warm))
    check(label + ": warm run creates nothing",
          rows and all(r["creations"] == 0 for r in rows.values()), show(warm))
    check(label + ": warm run says so",
          "%d of %d values served from the cache on disk, 0 creations" % (keys, keys)
          in warm.stdout, show(warm))


def fill_cache(binary, cache, home, megabytes):
    """Stores `megabytes` exec results of 1 MiB of random bytes each."""
    for i in range(megabytes):
        r = subprocess.run([binary, "exec", "--dir", cache, "--", "sh", "-c",
                            "head -c 1048576 /dev/urandom # %d" % i],
                           capture_output=True, timeout=TIMEOUT_S, env=dict(os.environ, HOME=home))
        if r.returncode != 0:
            return False
    return True


def check_compact_interrupted(binary, tmp, home):
    """^C during compact: the partial copy is removed and DEST never appears."""
    cache = os.path.join(tmp, "compact-src")
    check("compact: a 64 MiB cache to copy", fill_cache(binary, cache, home, 64))
    dest = os.path.join(tmp, "compact-dest")
    staging = os.path.join(tmp, ".compact-dest.compacting")
    proc = subprocess.Popen([binary, "compact", "--dir", cache, dest], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, HOME=home))
    deadline = time.monotonic() + 60
    partial = os.path.join(staging, "data.mdb")
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.exists(partial) and os.path.getsize(partial) > 0:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT_S)
    check("compact: ^C ends it as SIGINT does", proc.returncode == -signal.SIGINT,
          "exit %s" % proc.returncode)
    check("compact: ^C leaves no destination", not os.path.exists(dest))
    check("compact: ^C removes the partial copy", not os.path.exists(staging))
    r = run(binary, ["compact", "--dir", cache, dest], home=home)
    check("compact: runs again after ^C", r.returncode == 0 and
          os.path.getsize(os.path.join(dest, "data.mdb")) > 0, show(r))
    r = run(binary, ["verify", "--dir", dest], home=home)
    check("compact: the copy after ^C verifies", r.returncode == 0, show(r))
    return cache


def check_truncated_data(binary, tmp, home, cache):
    """A truncated data.mdb is a cache error (exit 3) in every command, never a signal."""
    data = os.path.join(cache, "data.mdb")
    size = os.path.getsize(data)
    for cut in (100, 8192, size // 2, size - 4096):
        copy = os.path.join(tmp, "truncated-%d" % cut)
        os.mkdir(copy, 0o700)
        with open(data, "rb") as src, open(os.path.join(copy, "data.mdb"), "wb") as dst:
            dst.write(src.read(cut))
        for command in (["stats"], ["verify"], ["ls"], ["get", "k"]):
            r = run(binary, command + ["--dir", copy], home=home)
            check("truncated data.mdb (%d of %d bytes): %s exits 3 naming the file" %
                  (cut, size, command[0]),
                  r.returncode == 3 and "data.mdb" in r.stderr, show(r))
        shutil.rmtree(copy)


def main(argv):
    if len(argv) not in (2, 3, 5):
        sys.stderr.write("usage: cli_test.py path/to/dogpile "
                         "[VERSION [LMDB-VERSION CEREAL-VERSION]]\n")
        return 2
    binary = os.path.abspath(argv[1])
    expected_versions = argv[2:]

    with tempfile.TemporaryDirectory(prefix="dogpile-cli-test-") as tmp:
        home = os.path.join(tmp, "home")
        os.mkdir(home)

        r = run(binary, ["--version"], home=home)
        number = r"\d+\.\d+\.\d+\S*"
        versions = re.fullmatch(r"dogpile (%s)\nLMDB (%s), cereal (%s)\n" % (number, number, number),
                                r.stdout)
        check("--version prints dogpile's, LMDB's and cereal's versions",
              r.returncode == 0 and versions is not None, show(r))
        if versions:
            for name, printed, expected in zip(("dogpile", "LMDB", "cereal"), versions.groups(),
                                               expected_versions):
                check("--version: %s %s" % (name, expected), printed == expected, show(r))

        r = run(binary, ["--help"], home=home)
        check("--help lists demo", r.returncode == 0 and re.search(r"^\s+demo\b", r.stdout, re.M),
              show(r))
        r = run(binary, ["help"], home=home)
        check("help lists the commands", r.returncode == 0 and "compact" in r.stdout, show(r))
        r = run(binary, ["help", "rm"], home=home)
        check("help rm shows rm's usage",
              r.returncode == 0 and "Usage: dogpile rm" in r.stdout, show(r))
        r = run(binary, ["demo", "--help"], home=home)
        check("demo --help lists its options",
              r.returncode == 0 and all(o in r.stdout for o in
                                        ("--dir", "--workers", "--keys", "--create-ms", "--fresh")),
              show(r))

        for args in (["--no-such-option"], ["demo", "--no-such-option"], [],
                     ["demo", "--workers", "0"], ["demo", "--keys", "many"]):
            r = run(binary, args, home=home)
            check("usage error %r exits 2" % (args,), r.returncode == 2, show(r))

        demo_args = ["--workers", "4", "--keys", "5", "--create-ms", "100"]

        # The default directory: $DOGPILE_DIR.
        env_dir = os.path.join(tmp, "from-env")
        check_demo_pair(binary, "DOGPILE_DIR", demo_args, {"DOGPILE_DIR": env_dir}, home, 5)
        check("DOGPILE_DIR holds the cache", os.path.exists(os.path.join(env_dir, "data.mdb")))

        # --dir wins over $DOGPILE_DIR.
        flag_dir = os.path.join(tmp, "from-flag")
        unused_dir = os.path.join(tmp, "unused")
        check_demo_pair(binary, "--dir", demo_args + ["--dir", flag_dir],
                        {"DOGPILE_DIR": unused_dir}, home, 5)
        check("--dir holds the cache", os.path.exists(os.path.join(flag_dir, "data.mdb")))
        check("--dir overrides DOGPILE_DIR", not os.path.exists(unused_dir))

        # --fresh makes a warm directory cold again.
        r = run(binary, ["demo", "--fresh", "--dir", flag_dir] + demo_args, home=home)
        rows = key_rows(r.stdout)
        check("--fresh recreates every key",
              r.returncode == 0 and len(rows) == 5 and
              all(v["creations"] == 1 for v in rows.values()), show(r))

        # --json: the same run as one JSON document.
        json_dir = os.path.join(tmp, "json")
        r = run(binary, ["demo", "--json", "--dir", json_dir] + demo_args, home=home)
        try:
            doc = json.loads(r.stdout)
        except ValueError:
            doc = None
        check("demo --json prints one JSON document", r.returncode == 0 and doc is not None,
              show(r))
        if doc is not None:
            check("demo --json reports one creation per key",
                  len(doc["keys"]) == 5 and all(k["creations"] == 1 for k in doc["keys"]) and
                  doc["total"]["calls"] == 20 and doc["failures"] == [], show(r))
            check("demo --json lists the codecs",
                  {c["codec"] for c in doc["codecs"]} ==
                  {"raw", "binary", "portable_binary", "json"}, show(r))

        # A regular file where the directory should be: a cache error naming the path.
        not_a_dir = os.path.join(tmp, "regular-file")
        with open(not_a_dir, "w") as f:
            f.write("not a cache\n")
        r = run(binary, ["demo", "--dir", not_a_dir] + demo_args, home=home)
        check("--dir on a regular file exits 3 naming the path",
              r.returncode == 3 and not_a_dir in r.stderr, show(r))

        cache = check_compact_interrupted(binary, tmp, home)
        check_truncated_data(binary, tmp, home, cache)

    return report("cli_test")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
