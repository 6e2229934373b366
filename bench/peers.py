#!/usr/bin/python3
"""Python peers on the engine benchmark's workload.

Each store holds 100k keys "key:<n>" with values of 100 B or 1 KiB (random
bytes), on disk in a temporary directory ($DOGPILE_BENCH_DIR, else the system
temporary directory): python3-diskcache (Cache.get/set), python3-dogpile.cache
(a region over dogpile.cache.dbm and over dogpile.cache.memory:
region.get/region.set) and python3-lmdb (txn.get with one reused read
transaction; one write transaction per put, synced as LMDB does by default).
Rows are random-key get hits and single-key puts (overwrites of a random key).

Each benchmark is timed with time.perf_counter_ns around a loop of N calls, N
grown until the loop runs for the minimum time; the figure is ns per call,
loop overhead included (measured once and written to the context as
loop_overhead_ns). Results are written as Google Benchmark JSON, named
peers/<row>/<column> like bench/peers_bench, so scripts/bench can put both in
one table. A peer that cannot be imported or fails is reported with
"error_occurred": true, as Google Benchmark reports a skipped benchmark; the
others still run.

Run with Debian's interpreter (the modules are Debian packages):
    /usr/bin/python3 bench/peers.py --out bench/results/peers_py.json [--quick]
"""

import argparse
import datetime
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time

KEY_COUNT = 100_000
# Random picks come from this many precomputed indices, so choosing a key
# costs the same in every column.
PICK_COUNT = 1 << 16
FILL_BATCH = 1000
SIZES = (("100B", 100), ("1KiB", 1024))
MAP_SIZE = 1 << 30

KEYS = ["key:%d" % i for i in range(KEY_COUNT)]
KEYS_BYTES = [k.encode() for k in KEYS]
_rng = random.Random(42)
PICKS = [_rng.randrange(KEY_COUNT) for _ in range(PICK_COUNT)]
MASK = PICK_COUNT - 1


def make_value(size):
    return random.Random(size).randbytes(size)


class BenchError(Exception):
    """A benchmark that cannot run; reported, never fatal."""


def time_gets(get, keys, miss, iterations):
    """ns for `iterations` random-key gets; raises when one misses."""
    picks = PICKS
    misses = 0
    start = time.perf_counter_ns()
    for i in range(iterations):
        if get(keys[picks[i & MASK]]) is miss:
            misses += 1
    elapsed = time.perf_counter_ns() - start
    if misses:
        raise BenchError("%d of %d preloaded keys were misses" % (misses, iterations))
    return elapsed


def time_puts(put, keys, value, iterations):
    """ns for `iterations` single-key puts of random keys."""
    picks = PICKS
    start = time.perf_counter_ns()
    for i in range(iterations):
        put(keys[picks[i & MASK]], value)
    return time.perf_counter_ns() - start


def measure(run, min_time_ns, max_iterations):
    """(iterations, ns per op): grows N as Google Benchmark does until one
    run of N lasts min_time_ns (or N reaches max_iterations)."""
    iterations = 1
    while True:
        elapsed = run(iterations)
        if elapsed >= min_time_ns or iterations >= max_iterations:
            return iterations, elapsed / iterations
        if elapsed <= 0:
            grow = 10.0
        else:
            grow = min(10.0, 1.4 * min_time_ns / elapsed)
        iterations = min(max_iterations, max(iterations + 1, int(iterations * grow)))


# ---- stores: each a dict with get/put callables, the keys they take and the
# miss sentinel, and a close() ----


def open_diskcache(directory, value):
    import diskcache

    cache = diskcache.Cache(directory)
    for i in range(0, KEY_COUNT, FILL_BATCH):
        with cache.transact():
            for key in KEYS[i:i + FILL_BATCH]:
                cache.set(key, value)
    return {"get": cache.get, "put": cache.set, "keys": KEYS, "miss": None,
            "close": cache.close}


def open_dogpile_region(backend, arguments, value):
    from dogpile.cache import make_region
    from dogpile.cache.api import NO_VALUE

    region = make_region().configure(backend, arguments=arguments)
    for i in range(0, KEY_COUNT, FILL_BATCH):
        region.set_multi({key: value for key in KEYS[i:i + FILL_BATCH]})
    return {"get": region.get, "put": region.set, "keys": KEYS, "miss": NO_VALUE,
            "close": lambda: None}


def open_dogpile_dbm(directory, value):
    os.makedirs(directory)
    return open_dogpile_region("dogpile.cache.dbm",
                               {"filename": os.path.join(directory, "cache.dbm")}, value)


def open_dogpile_memory(directory, value):
    del directory  # in memory only
    return open_dogpile_region("dogpile.cache.memory", {}, value)


def open_python_lmdb(directory, value):
    import lmdb

    env = lmdb.open(directory, map_size=MAP_SIZE)
    for i in range(0, KEY_COUNT, FILL_BATCH):
        with env.begin(write=True) as txn:
            for key in KEYS_BYTES[i:i + FILL_BATCH]:
                txn.put(key, value)
    state = {"reader": None}

    def get(key):
        # One read transaction for the whole run, as the C++ floor does.
        reader = state["reader"]
        if reader is None:
            reader = state["reader"] = env.begin(buffers=False)
        return reader.get(key)

    def put(key, val):
        # A reader left open would pin old pages while writes go on.
        if state["reader"] is not None:
            state["reader"].abort()
            state["reader"] = None
        with env.begin(write=True) as txn:
            txn.put(key, val)

    def close():
        if state["reader"] is not None:
            state["reader"].abort()
        env.close()

    return {"get": get, "put": put, "keys": KEYS_BYTES, "miss": None, "close": close}


COLUMNS = (
    ("diskcache", open_diskcache),
    ("dogpile.cache_dbm", open_dogpile_dbm),
    ("dogpile.cache_memory", open_dogpile_memory),
    ("python_lmdb", open_python_lmdb),
)


# ---- results ----


def result(name, iterations, ns_per_op):
    return {"name": name, "run_name": name, "run_type": "iteration",
            "repetitions": 1, "repetition_index": 0, "threads": 1,
            "iterations": iterations, "real_time": ns_per_op, "cpu_time": ns_per_op,
            "time_unit": "ns"}


def error_result(name, message):
    entry = result(name, 0, 0.0)
    entry["error_occurred"] = True
    entry["error_message"] = message
    return entry


def module_versions():
    versions = {}
    for module in ("diskcache", "dogpile", "lmdb"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "unknown")
        except ImportError as e:
            versions[module] = "missing: %s" % e
    try:
        import dbm

        versions["dbm"] = dbm._defaultmod.__name__ if dbm._defaultmod else "not chosen yet"
    except (ImportError, AttributeError):
        versions["dbm"] = "unknown"
    return versions


def context(args, min_time_ns):
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_name": socket.gethostname(),
        "executable": os.path.abspath(__file__),
        "num_cpus": os.cpu_count(),
        "load_avg": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "library_versions": module_versions(),
        "quick": args.quick,
        "min_time_s": min_time_ns / 1e9,
        "key_count": KEY_COUNT,
    }


def run_column(column, opener, parent, min_time_ns, max_iterations, wanted, log):
    """Results of one column's four benchmarks (errors included)."""
    names = [("get_hit", label, size) for label, size in SIZES] + \
            [("put", label, size) for label, size in SIZES]
    selected = [(op, label, size) for op, label, size in names
                if wanted(f"peers/{op}_{label}/{column}")]
    results = {}
    for label, size in SIZES:
        ops = [op for op, lab, _ in selected if lab == label]
        if not ops:
            continue
        value = make_value(size)
        directory = os.path.join(parent, f"{column}-{label}")
        store = None
        try:
            store = opener(directory, value)
            for op in ("get_hit", "put"):
                if op not in ops:
                    continue
                name = f"peers/{op}_{label}/{column}"
                try:
                    if op == "get_hit":
                        run = lambda n: time_gets(store["get"], store["keys"], store["miss"], n)
                    else:
                        run = lambda n: time_puts(store["put"], store["keys"], value, n)
                    iterations, ns = measure(run, min_time_ns, max_iterations)
                    results[name] = result(name, iterations, ns)
                    log("%-40s %12.0f ns %10d" % (name, ns, iterations))
                except Exception as e:  # a peer's failure is a result, not a crash
                    results[name] = error_result(name, "%s: %s" % (column, e))
                    log("%-40s ERROR: %s" % (name, e))
        except Exception as e:
            for op in ops:
                name = f"peers/{op}_{label}/{column}"
                results[name] = error_result(name, "%s: %s" % (column, e))
                log("%-40s ERROR: %s" % (name, e))
        finally:
            if store is not None:
                store["close"]()
            shutil.rmtree(directory, ignore_errors=True)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write (Google Benchmark format)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--filter", default="", help="regex over benchmark names")
    args = parser.parse_args(argv)

    min_time_ns = 100_000_000 if args.quick else 500_000_000
    max_iterations = 1_000_000_000
    pattern = re.compile(args.filter) if args.filter else None
    wanted = (lambda name: pattern.search(name) is not None) if pattern else (lambda name: True)

    def log(line):
        print(line, flush=True)

    # The harness's own cost per op: the get loop calling a builtin that does
    # nothing useful. Reported, not subtracted.
    _, loop_overhead_ns = measure(lambda n: time_gets(id, KEYS, object(), n),
                                  min_time_ns // 5, max_iterations)

    parent = os.environ.get("DOGPILE_BENCH_DIR") or None
    scratch = tempfile.mkdtemp(prefix="dogpile-peers-py-", dir=parent)
    by_name = {}
    try:
        for column, opener in COLUMNS:
            by_name.update(run_column(column, opener, scratch, min_time_ns, max_iterations,
                                      wanted, log))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # The same order as peers_bench: rows, then columns.
    order = [f"peers/{op}_{label}/{column}" for op in ("get_hit", "put")
             for label, _ in SIZES for column, _ in COLUMNS]
    info = context(args, min_time_ns)
    info["loop_overhead_ns"] = loop_overhead_ns
    report = {"context": info,
              "benchmarks": [by_name[name] for name in order if name in by_name]}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    temporary = args.out + ".tmp"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    os.replace(temporary, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
