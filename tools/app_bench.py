#!/usr/bin/env python3
"""Measures `moslora app` against the command line (docs/app.md, "Measured").

    python3 tools/app_bench.py --moslora target/release/moslora [--rounds 3] [--steps 100]
                               [--jobs 50] [--loads 20]

1. Training time: the same toy comparison (the Toy world preset on the shipped toy model and
   the bundled photos, cut to --steps steps and one seed) run through the app (from the POST
   that adds the job to its state "done") and by `moslora compare RUN.yaml` (the process's
   wall time), alternating, --rounds times each, each into a fresh output folder. The
   `compare` child's own time (its `done` event's `t`) is given beside the app's.
2. Page load times with --jobs jobs in the queue (one running, the rest waiting): each page
   loaded --loads times, median and largest, in milliseconds, and its size.

Standard library only; starts its own app on a free loopback port in a scratch folder.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class App:
    def __init__(self, exe, data):
        self.proc = subprocess.Popen([exe, "app", "--data", data, "--bind", "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            if line.startswith("listening on "):
                self.base = line.split()[-1].strip()
                break
        page = self.get("/subjects").decode()
        self.csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page).group(1)

    def get(self, path):
        with urllib.request.urlopen(self.base + path) as r:
            return r.read()

    def send(self, method, path, body, kind="application/json", extra=None):
        headers = {"Origin": self.base, "X-CSRF-Token": self.csrf, "Content-Type": kind}
        headers.update(extra or {})
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers)
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def post(self, path, obj):
        return self.send("POST", path, json.dumps(obj).encode())

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def cut(yaml, steps):
    """The Toy world preset's RUN.yaml cut to `steps` steps and one seed."""
    return (yaml.replace("steps: 500", f"steps: {steps}")
            .replace("seeds: [0, 1, 2, 3]", "seeds: [0]"))


def wait_done(app, job, limit=1800):
    t = time.time()
    while True:
        j = json.loads(app.get(f"/api/jobs/{job}"))
        if j["state"] in ("done", "failed"):
            assert j["state"] == "done", j
            return
        assert time.time() - t < limit, j
        time.sleep(0.05)


def child_seconds(data, job):
    with open(os.path.join(data, "jobs", str(job), "events.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    return last["t"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moslora", default=os.path.join(REPO, "target/release/moslora"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--loads", type=int, default=20)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="app-bench-")
    data = os.path.join(root, "data")
    app = App(a.moslora, data)
    try:
        subject = app.post("/api/subjects", {"name": "robot", "class": "robot", "identifier": "sks"})["id"]
        photos = os.path.join(REPO, "assets/subject")
        for name in sorted(os.listdir(photos)):
            with open(os.path.join(photos, name), "rb") as f:
                app.send("PUT", f"/api/subjects/{subject}/photos", f.read(),
                         "application/octet-stream", {"X-File-Name": name})
        form = {"subject": subject, "model": 1, "preset": "toy", "prompts": "toy"}
        yaml = cut(app.post("/api/preview", form)["yaml"], a.steps)

        def through_app():
            t = time.time()
            job = app.post("/api/jobs", dict(form, yaml=yaml))["id"]
            wait_done(app, job)
            return time.time() - t, child_seconds(data, job)

        def command_line(r):
            # The same RUN.yaml, its output moved to a fresh folder, on the command line.
            run_dir = os.path.join(root, f"cli-{r}")
            os.makedirs(run_dir)
            out_line = f'output: {json.dumps(os.path.join(run_dir, "out"))}'
            text = re.sub(r"^output: .*$", out_line, yaml, flags=re.M)
            run = os.path.join(run_dir, "run.yaml")
            with open(run, "w") as f:
                f.write(text)
            t = time.time()
            subprocess.run([a.moslora, "compare", run], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return time.time() - t

        rows = []
        for r in range(a.rounds):
            # Alternating which goes first, so that a drift in the machine's load favours
            # neither.
            if r % 2 == 0:
                (via_app, child), cli = through_app(), command_line(r)
            else:
                cli = command_line(r)
                via_app, child = through_app()
            rows.append((via_app, child, cli))
            print(f"round {r + 1}: app {via_app:.1f} s (compare child {child:.1f} s), "
                  f"command line {cli:.1f} s", flush=True)
        app_m = statistics.median(x[0] for x in rows)
        cli_m = statistics.median(x[2] for x in rows)
        print(f"median: app {app_m:.1f} s, command line {cli_m:.1f} s, ratio {app_m / cli_m:.3f}")

        # Page loads with a full queue: the first job runs, the others wait.
        long_yaml = cut(app.post("/api/preview", form)["yaml"], 100000)
        ids = [app.post("/api/jobs", dict(form, yaml=long_yaml))["id"] for _ in range(a.jobs)]
        time.sleep(2)
        done = rows and 1
        pages = ["/queue", "/subjects", f"/subjects/{subject}", "/new", "/models",
                 f"/jobs/{ids[0]}", f"/jobs/{done}/results"]
        for p in pages:
            times = []
            size = 0
            for _ in range(a.loads):
                t = time.perf_counter()
                size = len(app.get(p))
                times.append((time.perf_counter() - t) * 1000)
            print(f"{p}: median {statistics.median(times):.2f} ms, max {max(times):.2f} ms, "
                  f"{size / 1000:.0f} kB")
        for i in ids:
            app.post(f"/api/jobs/{i}/stop", {})
        t = time.time()
        while any(json.loads(app.get(f"/api/jobs/{i}"))["state"] in ("running", "stopping") for i in ids):
            assert time.time() - t < 60
            time.sleep(0.2)
    finally:
        app.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
