#!/usr/bin/env python3
"""Run the built test binaries in parallel lanes, each binary whole and on its own.

`cargo test` runs one test binary after another. Nearly all of moslora's tests run on one
thread (the tiny and toy models, as the command line's `threads: auto` runs them, and the
Python references they start), so on a machine with two cores one core sat idle through
most of `make test` (docs/benchmarks.md, "Time to a first result"). This runs up to LANES
binaries at once, the slowest first, each with the arguments given (`--test-threads=1`: the
tests of one binary share a process and its global state), and prints each binary's whole
output when it ends, so that outputs never interleave. Binaries do not share scratch space
(each writes under target/tmp/<crate>-*) and every server a test starts binds port 0.

    tools/test_lanes.py [--lanes N] [-- ARGS FOR EACH BINARY]

LANES: --lanes, else $TEST_LANES, else the cores this process may use, at most 4. Exit
status 1 if any binary failed (every binary still runs, as `cargo test --no-fail-fast`),
2 if the build failed. Each binary's time is kept in target/test-times.json and orders the
next run; a binary without a time starts first.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMES = ROOT / "target" / "test-times.json"
LOGS = ROOT / "target" / "test-logs"
# Measured in a whole run, before any time is recorded: the binaries that take over half a
# minute, slowest first (a fresh clone starts them first too).
SLOW_FIRST = ["toy_model", "train", "sweep", "render", "app", "single_file", "export",
              "sampler_parity", "study_serve"]


def test_binaries():
    """(name, executable) of every test target, built as `cargo test --release` builds them."""
    cmd = ["cargo", "test", "--release", "--no-run", "--message-format=json-render-diagnostics"]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(2)
    found = []
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue
        target = msg["target"]
        src = Path(target["src_path"]).relative_to(ROOT)
        kind = "unittests " if "test" not in target["kind"] else ""
        found.append((f"{kind}{src}", target["name"], msg["executable"]))
    return found


def order(found):
    """Slowest first: by the last run's times, unknown ones first, then SLOW_FIRST's order."""
    try:
        times = json.loads(TIMES.read_text())
    except (OSError, ValueError):
        times = {}

    def key(item):
        label, name, _ = item
        if label in times:
            return (1, -times[label])
        if name in SLOW_FIRST:
            return (0, SLOW_FIRST.index(name))
        return (0, len(SLOW_FIRST))

    return sorted(found, key=key)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lanes", type=int, default=None)
    p.add_argument("args", nargs="*", help="arguments for each test binary (after --)")
    a = p.parse_args()
    lanes = a.lanes or int(os.environ.get("TEST_LANES") or 0) or min(
        4, len(os.sched_getaffinity(0)))
    queue = order(test_binaries())
    LOGS.mkdir(parents=True, exist_ok=True)
    print(f"running {len(queue)} test binaries, {lanes} at a time", flush=True)

    # As `cargo test` runs them: from the package's folder, with cargo's variables.
    env = dict(os.environ, CARGO_MANIFEST_DIR=str(ROOT))
    lock = threading.Lock()
    results = {}
    start = time.monotonic()

    def run(item):
        label, name, exe = item
        log = LOGS / (re.sub(r"[^A-Za-z0-9_.-]+", "-", label) + ".log")
        t0 = time.monotonic()
        with open(log, "wb") as f:
            rc = subprocess.run([exe, *a.args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT).returncode
        took = time.monotonic() - t0
        with lock:
            results[label] = (rc, took)
            sys.stdout.write(f"     Running {label} ({Path(exe).relative_to(ROOT)})\n")
            sys.stdout.write(log.read_text(errors="replace"))
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            sys.stdout.write(f"     {label}: {status} in {took:.1f} s "
                             f"({time.monotonic() - start:.0f} s into the run)\n\n")
            sys.stdout.flush()

    def lane():
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop(0)
            run(item)

    workers = [threading.Thread(target=lane) for _ in range(lanes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

    TIMES.write_text(json.dumps({k: round(v[1], 1) for k, v in results.items()}, indent=1))
    failed = sorted(k for k, (rc, _) in results.items() if rc != 0)
    total = time.monotonic() - start
    busy = sum(t for _, t in results.values())
    print(f"{len(results)} test binaries in {total:.0f} s ({busy:.0f} s of binary time, "
          f"{lanes} lanes)")
    if failed:
        print("failed:\n" + "".join(f"    {f}\n" for f in failed) +
              "their output is above, and in target/test-logs/")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
