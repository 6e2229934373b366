#!/usr/bin/env python3
"""End-to-end checks of the dogpile command.

Usage: cli_test.py path/to/dogpile [expected-version]

Runs the binary as a user would: flags, exit codes, and `dogpile demo` on
fresh temporary cache directories (never the user's own cache).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

TIMEOUT_S = 300
KEY_ROW = re.compile(r"^(demo:\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s")
CODEC_ROW = re.compile(
    r"\b(raw|binary|portable_binary|json)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s*$")

failures = []
passed = []


def check(name, condition, detail=""):
    if condition:
        passed.append(name)
    else:
        failures.append(name + (": " + detail if detail else ""))
    return condition


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


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: cli_test.py path/to/dogpile [expected-version]\n")
        return 2
    binary = os.path.abspath(argv[1])
    expected_version = argv[2] if len(argv) == 3 else None

    with tempfile.TemporaryDirectory(prefix="dogpile-cli-test-") as tmp:
        home = os.path.join(tmp, "home")
        os.mkdir(home)

        r = run(binary, ["--version"], home=home)
        version_ok = r.returncode == 0 and re.fullmatch(r"dogpile \d+\.\d+\.\d+\S*\n", r.stdout)
        if version_ok and expected_version:
            version_ok = r.stdout == "dogpile %s\n" % expected_version
        check("--version prints the version", version_ok, show(r))

        r = run(binary, ["--help"], home=home)
        check("--help lists demo", r.returncode == 0 and re.search(r"^\s+demo\b", r.stdout, re.M),
              show(r))
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

    for name in passed:
        print("ok    " + name)
    for failure in failures:
        print("FAIL  " + failure)
    print("cli_test: %d passed, %d failed" % (len(passed), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
