"""Named checks for the command's Python tests: each test records every check
and, at the end, prints them all and exits 1 when any failed."""

failures = []
passed = []


def check(name, condition, detail=""):
    """Records `name` as passed when `condition` holds, else failed with `detail`."""
    if condition:
        passed.append(name)
    else:
        failures.append(name + (": " + detail if detail else ""))
    return condition


def report(program, note=""):
    """Prints every check and a summary line; returns the exit status."""
    for name in passed:
        print("ok    " + name)
    for failure in failures:
        print("FAIL  " + failure)
    print("%s: %d passed, %d failed%s" % (program, len(passed), len(failures), note))
    return 1 if failures else 0
