#!/usr/bin/python3
"""Renders docs/benchmarks.md and its plots from bench/results/*.json.

Reads every Google Benchmark JSON file in the results directory (the bench
binaries' and bench/peers.py's) and machine.json (written by scripts/bench).
Benchmarks are named <table>/<row>/<column>; Google Benchmark's suffixes
(iterations:1, manual_time, ...) are dropped. A cell's figure is the median
wall time of its runs (the "median" aggregate when there were repetitions).

Tables and the ratio each shows:
  serialize  time / memcpy of the same bytes (column memcpy of the row)
  engine     time / the raw liblmdb floor (column lmdb_floor of the row)
  peers      each peer's time / dogpile's (column dogpile): 3.0x means
             dogpile is three times faster
  process    counters of the multi-process runs (no ratio)
Anything missing (a file, a row, a cell) reads "not measured"; nothing here
fails on a partial run.

The notes file (bench/notes.md), when present, is copied in after the
targets: the place to say why a target is missed.

usage: /usr/bin/python3 bench/render.py [--results DIR] [--out FILE] [--plots DIR]
                                        [--notes FILE]
"""

import argparse
import glob
import json
import math
import os
import re
import statistics
import sys

NOT_MEASURED = "not measured"

# Name parts Google Benchmark appends to a benchmark's own name.
SUFFIX = re.compile(r"^(iterations:\d+|manual_time|real_time|process_time|threads:\d+|"
                    r"repeats:\d+|min_time:[^/]+|min_warmup_time:[^/]+)$")
SIZE = re.compile(r"(?:^|_)(\d+)(B|KiB|MiB|GiB)(?=_|$)")
UNIT_NS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
# Keys of a benchmark entry that are not user counters.
STANDARD_KEYS = {
    "name", "run_name", "run_type", "repetitions", "repetition_index", "threads",
    "iterations", "real_time", "cpu_time", "time_unit", "family_index",
    "per_family_instance_index", "aggregate_name", "aggregate_unit", "error_occurred",
    "error_message", "label", "bytes_per_second",
}

# Peers columns shown but not held to the "≥ 3× faster" target, and why.
NOT_PEER_TARGETS = {"python_lmdb": "raw LMDB from Python, a floor rather than a cache"}


# ---- reading ----


class Cell:
    """One <table>/<row>/<column>: its runs' times (ns) and counters."""

    def __init__(self):
        self.times = []
        self.median_time = None  # from a "median" aggregate, when present
        self.counters = {}  # name -> list of values
        self.median_counters = {}
        self.error = None

    def time_ns(self):
        if self.median_time is not None:
            return self.median_time
        return statistics.median(self.times) if self.times else None

    def counter(self, name):
        if name in self.median_counters:
            return self.median_counters[name]
        values = self.counters.get(name)
        return statistics.median(values) if values else None

    def worst(self, name, pick=max):
        """The worst of the counter's runs (every repetition), else its median."""
        values = self.counters.get(name)
        return pick(values) if values else self.counter(name)

    def counter_names(self):
        names = list(self.median_counters)
        names += [n for n in self.counters if n not in self.median_counters]
        return names


def split_name(entry):
    name = entry.get("run_name") or entry.get("name", "")
    parts = [p for p in name.split("/") if not SUFFIX.match(p)]
    if entry.get("run_type") == "aggregate" and not entry.get("run_name"):
        aggregate = entry.get("aggregate_name")
        if aggregate and parts and parts[-1].endswith("_" + aggregate):
            parts[-1] = parts[-1][: -len(aggregate) - 1]
    if len(parts) < 2:
        return None
    table, row = parts[0], parts[1]
    column = "/".join(parts[2:])
    return table, row, column


def load_results(directory):
    """{table: {row: {column: Cell}}}, files read, files that failed to parse."""
    tables = {}
    files, broken = [], []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        if os.path.basename(path) == "machine.json":
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            broken.append("%s (%s)" % (os.path.basename(path), e))
            continue
        entries = data.get("benchmarks") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            broken.append("%s (no benchmarks list)" % os.path.basename(path))
            continue
        files.append(os.path.basename(path))
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            key = split_name(entry)
            if key is None:
                continue
            table, row, column = key
            cell = tables.setdefault(table, {}).setdefault(row, {}).setdefault(column, Cell())
            if entry.get("error_occurred"):
                cell.error = entry.get("error_message") or "error"
                continue
            scale = UNIT_NS.get(entry.get("time_unit", "ns"), 1.0)
            real = entry.get("real_time")
            counters = {k: v for k, v in entry.items()
                        if k not in STANDARD_KEYS and isinstance(v, (int, float))
                        and not isinstance(v, bool)}
            if entry.get("run_type") == "aggregate":
                if entry.get("aggregate_name") != "median":
                    continue
                if isinstance(real, (int, float)):
                    cell.median_time = real * scale
                cell.median_counters.update(counters)
            else:
                if isinstance(real, (int, float)):
                    cell.times.append(real * scale)
                for k, v in counters.items():
                    cell.counters.setdefault(k, []).append(v)
    return tables, files, broken


def load_machine(directory):
    try:
        with open(os.path.join(directory, "machine.json"), encoding="utf-8") as f:
            data = json.load(f)
            return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


# ---- lookups ----


def cell(tables, table, row, column):
    return tables.get(table, {}).get(row, {}).get(column)


def time_of(tables, table, row, column):
    c = cell(tables, table, row, column)
    return c.time_ns() if c is not None else None


def counter_of(tables, table, row, column, name, worst=False):
    c = cell(tables, table, row, column)
    if c is None:
        return None
    return c.worst(name) if worst else c.counter(name)


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


# ---- formatting ----


def fmt_time(ns):
    if ns is None:
        return NOT_MEASURED
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return "%s %s" % (sig(ns / scale), unit)
    return "%s ns" % sig(ns)


def sig(x, digits=3):
    """x with about `digits` significant digits, no exponent."""
    if x == 0 or not math.isfinite(x):
        return "%g" % x
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return "%.*f" % (decimals, x)


def fmt_ratio(r):
    return "%s×" % sig(r) if r is not None else NOT_MEASURED


def fmt_number(x):
    if x is None:
        return NOT_MEASURED
    if abs(x) >= 1e6:
        return "%s M" % sig(x / 1e6)
    if abs(x) >= 1e4:
        return "%s k" % sig(x / 1e3)
    if float(x).is_integer():
        return "%d" % x
    return sig(x)


def md_table(header, rows, numeric=True):
    """A markdown table; columns after the first are right-aligned when numeric."""
    align = "--:" if numeric else "---"
    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i == 0 else align for i in range(len(header))) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def ordered_columns(rows, first=()):
    seen = []
    for columns in rows.values():
        for c in columns:
            if c not in seen:
                seen.append(c)
    head = [c for c in first if c in seen]
    return head + [c for c in seen if c not in head]


# ---- targets ----


class Target:
    def __init__(self, text, measured, status):
        self.text, self.measured, self.status = text, measured, status


def target_ratio_at_most(tables, text, table, row, column, baseline, limit):
    r = ratio(time_of(tables, table, row, column), time_of(tables, table, row, baseline))
    if r is None:
        return Target(text, NOT_MEASURED, NOT_MEASURED)
    return Target(text, fmt_ratio(r), "met" if r <= limit else "missed")


def evaluate_targets(tables):
    targets = []
    for size in ("100B", "1KiB"):
        targets.append(target_ratio_at_most(
            tables, "engine get_or_create hit, %s: ≤ 1.5× lmdb_floor" % size,
            "engine", "get_or_create_hit_" + size, "dogpile", "lmdb_floor", 1.5))
    targets.append(target_ratio_at_most(
        tables, "serialize decode 64 KiB string, default path: ≤ 2× memcpy",
        "serialize", "decode_64KiB_default_path", "binary", "memcpy", 2.0))

    engine = tables.get("engine", {})
    set_rows = sorted(r for r in engine if r.startswith("set_") and not r.startswith("set_multi"))
    for row in set_rows or ["set_durable_100B"]:
        targets.append(target_ratio_at_most(
            tables, "engine %s: ≤ 1.2× lmdb_floor" % row, "engine", row, "dogpile",
            "lmdb_floor", 1.2))

    # set_multi(100), durable, per item, against single durable sets.
    multi = time_of(tables, "engine", "set_multi100_durable_per_item", "dogpile")
    single = time_of(tables, "engine", "set_multi100_durable_per_item", "dogpile_100_sets")
    against = "100 Region::set calls"
    if single is None:
        single = time_of(tables, "engine", "set_durable_100B", "dogpile")
        against = "set_durable_100B"
    r = ratio(single, multi)
    text = "engine set_multi(100) durable: ≥ 10× cheaper per item than %s" % against
    targets.append(Target(text, fmt_ratio(r) if r is not None else NOT_MEASURED,
                          NOT_MEASURED if r is None else ("met" if r >= 10 else "missed")))

    peers = tables.get("peers", {})
    for row in sorted(r for r in peers if r.startswith("get_hit")) or ["get_hit_100B"]:
        base = time_of(tables, "peers", row, "dogpile")
        others = [c for c in peers.get(row, {}) if c != "dogpile" and not c.startswith("dogpile_")
                  and c not in NOT_PEER_TARGETS]
        ratios = {c: ratio(time_of(tables, "peers", row, c), base) for c in others}
        measured = {c: r for c, r in ratios.items() if r is not None}
        text = "peers %s: every peer ≥ 3× dogpile's time" % row
        if base is None or not measured:
            targets.append(Target(text, NOT_MEASURED, NOT_MEASURED))
            continue
        slowest_gap = min(measured, key=measured.get)
        detail = ", ".join("%s %s" % (c, fmt_ratio(measured[c])) for c in sorted(measured))
        for c in sorted(NOT_PEER_TARGETS):
            r = ratio(time_of(tables, "peers", row, c), base)
            if r is not None:
                detail += "; %s %s (%s)" % (c, fmt_ratio(r), NOT_PEER_TARGETS[c])
        missing = [c for c in others if c not in measured]
        if missing:
            detail += "; not measured: " + ", ".join(missing)
        status = "met" if measured[slowest_gap] >= 3 and not missing else (
            "missed" if measured[slowest_gap] < 3 else NOT_MEASURED)
        targets.append(Target(text + " (closest: %s)" % slowest_gap, detail, status))

    process = tables.get("process", {})
    cold = process.get("cold_key", {})
    for column in sorted(cold, key=param_value) or ["N=16"]:
        # Every round must hold: judged on the worst repetition.
        c = cell(tables, "process", "cold_key", column)
        creations = c.worst("creations", max) if c is not None else None
        fewest = c.worst("creations", min) if c is not None else None
        extra = counter_of(tables, "process", "cold_key", column, "waiter_extra_ms_max",
                           worst=True)
        text = ("process cold_key %s: 1 creation, waiters within 5 ms of the store "
                "(worst round)" % column)
        if creations is None or extra is None:
            targets.append(Target(text, NOT_MEASURED, NOT_MEASURED))
            continue
        ok = creations == 1 and fewest == 1 and extra <= 5
        count = fmt_number(creations) if fewest == creations else "%s–%s" % (
            fmt_number(fewest), fmt_number(creations))
        targets.append(Target(text, "%s creation(s), max %s ms" % (count, sig(extra)),
                              "met" if ok else "missed"))
    p99 = counter_of(tables, "process", "stale_reads", "N=16", "p99_us")
    targets.append(Target("process stale_reads N=16: p99 < 1 ms",
                          NOT_MEASURED if p99 is None else "%s µs" % sig(p99),
                          NOT_MEASURED if p99 is None else ("met" if p99 < 1000 else "missed")))
    return targets


def param_value(column):
    m = re.search(r"(\d+)$", column)
    return (int(m.group(1)) if m else 0, column)


# ---- tables ----


def time_table(tables, table, baseline, ratio_note):
    """The table's rows as markdown; rows with the same columns share a table."""
    rows = tables.get(table, {})
    if not rows:
        return NOT_MEASURED + "."
    first = ("dogpile",) if baseline is None else (baseline,)
    groups = {}
    for row, cells in rows.items():
        groups.setdefault(tuple(ordered_columns({row: cells}, first)), []).append(row)
    out = [ratio_note]
    for columns, names in groups.items():
        body = []
        for row in names:
            base = time_of(tables, table, row, baseline or "dogpile")
            line = [row]
            for column in columns:
                c = rows[row][column]
                if c.error is not None and c.time_ns() is None:
                    line.append("not measured (%s)" % c.error.replace("|", "/")[:80])
                    continue
                t = c.time_ns()
                text = fmt_time(t)
                r = ratio(t, base)
                if column != (baseline or "dogpile") and t is not None and r is not None:
                    text += " (%s)" % fmt_ratio(r)
                line.append(text)
            body.append(line)
        out.append(md_table(["row"] + list(columns), body))
    return "\n\n".join(out)


# Counters in reading order; others follow in the order found.
PROCESS_COUNTERS = {
    "cold_key": ["creations", "waiters", "waiter_extra_ms_p50", "waiter_extra_ms_max",
                 "creator_ms", "creator_store_ms"],
    "stale_reads": ["reads", "p50_us", "p99_us", "max_us", "not_stale", "reader_creations",
                    "pace_us"],
    "hit_throughput": ["items_per_second", "per_reader_per_second", "misses"],
}


def process_tables(tables):
    rows = tables.get("process", {})
    if not rows:
        return [NOT_MEASURED + "."]
    out = []
    for row in list(PROCESS_COUNTERS) + [r for r in rows if r not in PROCESS_COUNTERS]:
        cells = rows.get(row)
        if not cells:
            out.append("**%s**: %s." % (row, NOT_MEASURED))
            continue
        columns = sorted(cells, key=param_value)
        counters = [n for n in PROCESS_COUNTERS.get(row, [])
                    if any(n in cells[c].counter_names() for c in columns)]
        for column in columns:
            for name in cells[column].counter_names():
                if name not in counters:
                    counters.append(name)
        body = []
        for column in columns:
            c = cells[column]
            if c.error is not None and not c.counters and not c.median_counters:
                body.append([column, "not measured (%s)" % c.error.replace("|", "/")[:80]]
                            + [""] * len(counters))
                continue
            body.append([column, fmt_time(c.time_ns())]
                        + [fmt_number(c.counter(n)) for n in counters])
        out.append("**%s**\n\n%s" % (row, md_table(["processes", "round"] + counters, body)))
    return out


# ---- plots ----


def size_bytes(token, unit):
    return int(token) * {"B": 1, "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30}[unit]


def by_size(rows):
    """{operation: {column: [(bytes, ns)]}} for rows whose name holds a size."""
    series = {}
    for row, cells in rows.items():
        m = SIZE.search(row)
        if not m:
            continue
        rest = (row[: m.start()] + row[m.end():]).strip("_")
        # "64KiB_string" is the same operation as "100B".
        rest = re.sub(r"_string$", "", rest)
        size = size_bytes(m.group(1), m.group(2))
        for column, c in cells.items():
            t = c.time_ns()
            if t is not None:
                series.setdefault(rest, {}).setdefault(column, []).append((size, t))
    return series


def size_label(n):
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return "%d %s" % (n // scale, unit)
    return "%d B" % n


def plot_by_size(plt, tables, table, operations, baseline, path, title, unit):
    series = by_size(tables.get(table, {}))
    operations = [op for op in operations if op in series]
    if not operations:
        return None
    columns = sorted({c for op in operations for c in series[op]})
    colors = {c: "C%d" % (i % 10) for i, c in enumerate(columns)}
    fig, axes = plt.subplots(1, len(operations), figsize=(4.8 * len(operations) + 2.2, 4.2),
                             squeeze=False)
    for ax, op in zip(axes[0], operations):
        for column in columns:
            points = sorted(series[op].get(column, []))
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1] / UNIT_NS[unit] for p in points]
            # The baseline dashed; dogpile's own columns drawn heavier.
            own = column == "dogpile" or column.startswith("dogpile_")
            ax.plot(xs, ys, "--" if column == baseline else "-", marker="o",
                    color=colors[column], linewidth=2.6 if own else 1.4, label=column)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        sizes = sorted({p[0] for pts in series[op].values() for p in pts})
        ax.set_xticks(sizes)
        ax.set_xticklabels([size_label(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("value size")
        ax.set_ylabel("%s per operation (median)" % unit.replace("us", "µs"))
        ax.set_title(op)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = {}, []
    for ax in axes[0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in handles:
                handles[l] = h
                labels.append(l)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.legend([handles[l] for l in labels], labels, loc="center right", fontsize="small")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_process(plt, tables, row, counters, ylabel, path, title, xlabel, target=None):
    cells = tables.get("process", {}).get(row, {})
    columns = sorted(cells, key=param_value)
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    drawn = False
    for name, label in counters:
        points = [(param_value(c)[0], cells[c].counter(name)) for c in columns]
        points = [p for p in points if p[1] is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    xs = sorted({param_value(c)[0] for c in columns})
    if target is not None:
        ax.axhline(target[0], color="grey", linestyle=":", label=target[1])
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_plots(tables, plot_dir):
    """Paths of the plots drawn, by name; empty when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        print("render.py: no plots (%s)" % e, file=sys.stderr)
        return {}
    os.makedirs(plot_dir, exist_ok=True)
    drawn = {}

    def keep(name, path):
        if path is not None:
            drawn[name] = path

    keep("serialize", plot_by_size(
        plt, tables, "serialize", ["encode", "decode"], "memcpy",
        os.path.join(plot_dir, "serialize.png"), "Serialization: cost per operation by value size",
        "ns"))
    keep("peers", plot_by_size(
        plt, tables, "peers", ["get_hit", "put"], None,
        os.path.join(plot_dir, "peers.png"), "dogpile and its peers: cost per operation", "us"))
    keep("cold_key", plot_process(
        plt, tables, "cold_key",
        [("waiter_extra_ms_p50", "p50"), ("waiter_extra_ms_max", "max")],
        "ms after the creator's store", os.path.join(plot_dir, "process_cold_key.png"),
        "Cold key: waiters' extra time", "processes", (5, "target: 5 ms")))
    keep("stale_reads", plot_process(
        plt, tables, "stale_reads", [("p50_us", "p50"), ("p99_us", "p99")],
        "µs per stale read", os.path.join(plot_dir, "process_stale_reads.png"),
        "Stale key being regenerated: read latency", "reader processes"))
    keep("hit_throughput", plot_process(
        plt, tables, "hit_throughput", [("items_per_second", "hits/s, all readers")],
        "hits per second", os.path.join(plot_dir, "process_hit_throughput.png"),
        "Hit throughput by reader processes", "reader processes"))
    return drawn


# ---- the report ----

REPRODUCE = """\
On a Debian 12 machine, as root, from the repository root:

```sh
./scripts/bench            # full run: about 10-15 minutes
./scripts/bench --quick    # a few minutes, shorter and noisier
./scripts/bench --quick --benchmark_filter=engine   # options go to Google Benchmark
```

It installs the build and peer packages, builds `build-bench/` (release,
assertions off), runs each `bench/*_bench` binary and `bench/peers.py`, writes
the raw Google Benchmark JSON to `bench/results/`, and renders this page with
`/usr/bin/python3 bench/render.py`. Stores live on disk in a temporary
directory under `$DOGPILE_BENCH_DIR` (default `/var/tmp`). Redis is a
`redis-server` of the script's own on a free loopback port, saving nothing."""


def image(drawn, name, plot_dir, out_path, alt):
    if name not in drawn:
        return ""
    rel = os.path.relpath(drawn[name], os.path.dirname(os.path.abspath(out_path)) or ".")
    return "\n\n![%s](%s)" % (alt, rel.replace(os.sep, "/"))


def machine_section(machine):
    if not machine:
        return NOT_MEASURED + " (no machine.json; run ./scripts/bench)."
    rows = []
    for key, label in (("date", "run"), ("mode", "mode"), ("cpu", "CPU"), ("cores", "cores"),
                       ("memory", "memory"), ("os", "OS"), ("kernel", "kernel"),
                       ("bench_dir_filesystem", "filesystem of the stores"),
                       ("compiler", "compiler"), ("commit", "commit")):
        if key in machine and machine[key] not in ("", None):
            rows.append([label, str(machine[key]).replace("|", "/")])
    args = machine.get("benchmark_args")
    if args:
        rows.append(["Google Benchmark options", "`%s`" % " ".join(args)])
    packages = machine.get("packages") or {}
    for name, version in packages.items():
        rows.append(["`%s`" % name, version])
    return md_table(["", ""], rows, numeric=False)


def render(results_dir, out_path, plot_dir, notes_path):
    tables, files, broken = load_results(results_dir)
    machine = load_machine(results_dir)
    drawn = draw_plots(tables, plot_dir)
    targets = evaluate_targets(tables)

    parts = ["# Benchmarks", "",
             "Generated by `./scripts/bench` (`bench/render.py`) from the JSON in "
             "`bench/results/`; do not edit by hand. Every figure is the median wall time "
             "of one operation on the machine below, and every ratio is taken between "
             "figures of the same run.", ""]
    if files:
        parts += ["Result files: %s." % ", ".join("`%s`" % f for f in files), ""]
    if broken:
        parts += ["Unreadable result files (ignored): %s." % "; ".join(broken), ""]

    parts += ["## Targets", "",
              md_table(["target", "measured", "status"],
                       [[t.text, t.measured, t.status] for t in targets], numeric=False), ""]

    # Why a target is missed, written by hand beside the results.
    if notes_path and os.path.isfile(notes_path):
        with open(notes_path, encoding="utf-8") as f:
            notes = f.read().strip()
        if notes:
            parts += [notes, ""]

    parts += ["## Machine", "", machine_section(machine), ""]
    parts += ["## How to reproduce", "", REPRODUCE, ""]

    parts += ["## Serialization", "",
              time_table(tables, "serialize", "memcpy",
                         "Encode and decode of a payload per codec; `memcpy` copies the same "
                         "bytes once. Cells: median time (ratio to memcpy). `envelope_*` rows "
                         "are the envelope alone (header and checksum); "
                         "`decode_64KiB_default_path` is a region read's decode, envelope "
                         "checked.")
              + image(drawn, "serialize", plot_dir, out_path, "serialization cost by size"), ""]
    parts += ["## Engine", "",
              time_table(tables, "engine", "lmdb_floor",
                         "Region operations in a 100k-key cache on disk; `lmdb_floor` is "
                         "liblmdb doing the same work in the same binary. Cells: median time "
                         "(ratio to lmdb_floor). `set_multi100_*` rows are per item."), ""]
    parts += ["## Peers", "",
              time_table(tables, "peers", None,
                         "The same workload on the caches people use today. Cells: median "
                         "time (that time / dogpile's, so 3× means dogpile is three times "
                         "faster).")
              + image(drawn, "peers", plot_dir, out_path, "peers cost by size"), ""]

    parts += ["## Processes", "",
              "Real fork()ed processes on one cache directory. `cold_key`: N processes "
              "ask for one missing key whose creator takes `creator_ms`; waiter extra time "
              "is how long after the creator's get_or_create returned (value stored, lock "
              "released) each other process returned. `stale_reads`: one process "
              "regenerates a stale key while N processes read it (one read per `pace_us` "
              "each); latencies of those reads. `hit_throughput`: reader processes doing "
              "random-key hits on a 10k-key cache; `items_per_second` is the total. "
              "`round` is the wall time of the whole round.", ""]
    parts += ["\n\n".join(process_tables(tables))]
    for name, alt in (("cold_key", "cold key waiter extra time"),
                      ("stale_reads", "stale read latency"),
                      ("hit_throughput", "hit throughput")):
        img = image(drawn, name, plot_dir, out_path, alt).strip()
        if img:
            parts += ["", img]
    parts.append("")

    known = {"serialize", "engine", "peers", "process"}
    for table in sorted(t for t in tables if t not in known):
        parts += ["## %s" % table, "",
                  time_table(tables, table, None, "Cells: median time."), ""]

    text = "\n".join(p for p in parts if p is not None).rstrip() + "\n"
    text = re.sub(r"\n{3,}", "\n\n", text)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    return targets


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--plots", default="docs/benchmarks")
    parser.add_argument("--notes", default="bench/notes.md",
                        help="markdown placed after the targets, when the file exists")
    args = parser.parse_args()
    targets = render(args.results, args.out, args.plots, args.notes)
    for t in targets:
        print("%-12s %-70s %s" % (t.status, t.text, t.measured))
    print("wrote %s" % args.out)


if __name__ == "__main__":
    main()
