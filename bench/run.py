"""`make bench`: moslora against the diffusers + peft reference (bench/reference.py) on the
same SDXL-architecture models, the same batches, the same thread count and the same number
of steps, in alternating runs (moslora, reference, moslora, reference, ...), one case per
process so that each peak resident memory is that case's alone.

    python bench/run.py              # the full CPU benchmark (about 18 minutes on 2 cores)
    BENCH_QUICK=1 python bench/run.py   # a short smoke run of every case

Prints the table and writes it, with the machine and the versions, to
bench/results/cpu-<date>.md (and the raw runs to cpu-<date>.json beside it).

The "busy machine" cases run each side with its own defaults (moslora: `threads: auto`
and its passive OpenMP wait; the reference: torch's threads and OpenMP's default wait), once on
an otherwise idle machine and once beside a CPU hog (two busy loops, one per core of a
2-core machine), and record both sides' CPU time.

Environment: BENCH_THREADS (default: OMP_NUM_THREADS, else the number of cores),
BENCH_ROUNDS (override the rounds of every case), BENCH_OUT (results folder), BENCH_ONLY
(comma-separated case ids to run, e.g. score-64), BENCH_QUIET_WAIT (seconds to wait for an
idle machine before each run), BENCH_RETRIES (re-measurements of a contended run).
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "target" / "bench"
BIN = ROOT / "target" / "release" / "moslora-bench"
MOSLORA = ROOT / "target" / "release" / "moslora"
PY = sys.executable
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
THREADS = int(os.environ.get("BENCH_THREADS") or os.environ.get("OMP_NUM_THREADS")
              or os.cpu_count())
OUT = Path(os.environ.get("BENCH_OUT") or ROOT / "bench" / "results")
# Wait for other processes' load to settle before each run, at most this long.
QUIET_WAIT_S = int(os.environ.get("BENCH_QUIET_WAIT") or (0 if QUICK else 180))
# A run during which the rest of the machine used more than this many cores is measured again
# (at most RETRIES times).
CONTENDED = 0.1
RETRIES = int(os.environ.get("BENCH_RETRIES") or (0 if QUICK else 3))
ONLY = [c for c in os.environ.get("BENCH_ONLY", "").split(",") if c]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def running_others():
    """Runnable tasks on the machine besides the one reading (from /proc/loadavg)."""
    samples = []
    for _ in range(5):
        samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        time.sleep(0.1)
    return statistics.mean(samples)


def busy_cpu_s():
    """CPU seconds the whole machine has been busy since boot (/proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet():
    """Start a measurement only while the machine is otherwise idle (it may be shared),
    waiting at most QUIET_WAIT_S; returns the load seen."""
    deadline = time.time() + QUIET_WAIT_S
    while True:
        busy = running_others()
        if busy < 0.5 or time.time() >= deadline:
            return busy
        time.sleep(3)


HOG_LOOPS = 2


def start_hog():
    """Two busy loops (shell `while :`), the CPU hog of the busy-machine cases."""
    return [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(HOG_LOOPS)]


def stop_hog(hog):
    for p in hog:
        p.kill()
        p.wait()


def run_measured(argv, env_extra=None, hog=False):
    """Run one measured process after waiting for quiet (beside a CPU hog when `hog`);
    returns its RESULT json (if any), wall and CPU seconds, and its peak resident memory
    (MiB) from wait4: ru_maxrss of exactly this child."""
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1",
    })
    # Each side with its own OpenMP wait policy (`make` exports PASSIVE for the tests).
    env.pop("OMP_WAIT_POLICY", None)
    env.update(env_extra or {})
    busy_before = wait_quiet()
    hog_procs = start_hog() if hog else []
    load1 = float(Path("/proc/loadavg").read_text().split()[0])
    out_path = BENCH / "run.stdout"
    err_path = BENCH / "run.stderr"
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        busy0 = busy_cpu_s()
        t0 = time.perf_counter()
        p = subprocess.Popen([str(a) for a in argv], cwd=ROOT, env=env, stdout=fo, stderr=fe)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        busy = busy_cpu_s() - busy0
    stop_hog(hog_procs)
    code = os.waitstatus_to_exitcode(status)
    out, err = out_path.read_text(), err_path.read_text()
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(map(str, argv))}\n{err[-3000:]}")
    result = None
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "result": result, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": ru.ru_maxrss / 1024,
        "load1": load1, "busy_before": busy_before,
        # Cores' worth of CPU the rest of the machine used while this ran.
        "others_cores": max(0.0, busy - cpu) / wall,
    }


# --- what is measured ---------------------------------------------------------------------

def models():
    """The tiny and small models, made once by diffusers from the configs and seeded, in
    diffusers' `save_pretrained` layout: both sides load these same files."""
    made = {}
    for name, cfg in [("tiny", ROOT / "configs" / "tiny"),
                      ("small", ROOT / "bench" / "configs" / "small")]:
        out = BENCH / f"{name}-sdxl"
        stamp = out / ".config"
        key = json.dumps({p.relative_to(cfg).as_posix(): p.read_text()
                          for p in sorted(cfg.rglob("*.json"))})
        if not (stamp.exists() and stamp.read_text() == key):
            log(f"making the {name} model in {out}")
            subprocess.run([PY, ROOT / "bench" / "reference.py", "make-model", "--config", cfg,
                            "--out", out], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
            stamp.write_text(key)
        made[name] = out
    return made


def sample_adapters(small):
    """A MoSLoRA adapter with non-zero B for the small model, and its exact plain-LoRA export
    (mixer folded) that diffusers' `load_lora_weights` reads."""
    ours = BENCH / "small-moslora.safetensors"
    theirs = BENCH / "small-moslora-diffusers.safetensors"
    if not ours.exists() or ours.stat().st_mtime < (small / ".config").stat().st_mtime:
        subprocess.run([BIN, "make-adapter", "--model", small, "--adapter", "moslora",
                        "--out", ours], check=True, stdout=subprocess.DEVNULL)
        theirs.unlink(missing_ok=True)
    if not theirs.exists():
        subprocess.run([MOSLORA, "export", ours, "--format", "diffusers", "--out", theirs],
                       check=True, stdout=subprocess.DEVNULL)
    return ours, theirs


def recipe_config(tiny, steps):
    """moslora's RUN.yaml for the whole recipe, set to do the reference loop's work: one
    centre crop per photo (no flips) encoded once, batch 4, 500 steps, rank 4."""
    d = BENCH / "recipe"
    d.mkdir(parents=True, exist_ok=True)
    run_yaml = d / "run.yaml"
    run_yaml.write_text(f"""model: {tiny}
output: {d / 'moslora-out'}
seed: 0
device: cpu
subject:
  images: {ROOT / 'assets' / 'subject'}
  identifier: sks
  class: toy
  prompt: "a photo of [V] {{class}}"
train:
  steps: {steps}
  batch_size: 4
  learning_rate: 1.0e-4
  resolution: 64
  center_crop: true
  random_flip: false
  crops_per_image: 1
  checkpoint_every: 0
adapter:
  rank: 4
  alpha: 4
""")
    return run_yaml


def score_case():
    """The scoring case's encoders (random ViT-B/32-shaped CLIP, ViT-S/16-shaped DINO) and
    render folder (64 pictures of 1024 px, 5 photos), made once by the reference script."""
    size = 256 if QUICK else 1024
    out = BENCH / f"score-{size}"
    if not (out / "renders" / "manifest.json").exists():
        log(f"making the scoring case in {out}")
        subprocess.run([PY, ROOT / "bench" / "reference.py", "make-score-case", "--out", out,
                        "--renders", "64", "--size", str(size)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return out, size


def cases(m):
    ref = [PY, ROOT / "bench" / "reference.py"]
    q = QUICK
    out = [] if m is None else sdxl_cases(m, ref, q)
    score_dir, score_size = score_case()
    args = ["score", "--renders", score_dir / "renders", "--clip", score_dir / "clip",
            "--dino", score_dir / "dino", "--threads", str(THREADS)]
    out.append({
        "id": "score-64",
        "label": f"scoring 64 images of {score_size} px against 5 photos: ViT-B/32 CLIP "
                 "(CLIP-I, CLIP-T) + ViT-S/16 DINO",
        "ours": [BIN, *args], "theirs": [*ref, *args], "metric": "score_s",
        "rounds": 1 if q else 3, "target": 1.0})
    return out


def sdxl_cases(m, ref, q):
    tiny, small = m["tiny"], m["small"]
    tiny_steps = ["--warmup", "2" if q else "5", "--steps", "5" if q else "30"]
    small_res = "128" if q else "512"
    # Two warm-up steps: the first step or two of either side run slower (allocator and
    # kernel set-up), and a step is the steady state being compared.
    small_steps = ["--warmup", "0" if q else "2", "--steps", "1" if q else "3"]
    common = ["--threads", str(THREADS), "--rank", "4", "--batch", "4"]
    out = []
    for kind in ["lora", "moslora"]:
        args = ["train-step", "--model", tiny, "--adapter", kind, "--resolution", "64",
                *common, *tiny_steps]
        out.append({"id": f"tiny-step-{kind}", "label": f"tiny: training step, {kind_label(kind)}",
                    "ours": [BIN, *args], "theirs": [*ref, *args], "metric": "median_s",
                    "rounds": 1 if q else 3, "target": 0.7})
    for kind, ckpt in [("lora", False), ("moslora", False), ("moslora", True)]:
        args = ["train-step", "--model", small, "--adapter", kind, "--resolution", small_res,
                *common, *small_steps] + (["--gradient-checkpointing"] if ckpt else [])
        label = f"small: training step, {kind_label(kind)}" + (
            ", gradient checkpointing" if ckpt else "")
        out.append({"id": f"small-step-{kind}" + ("-ckpt" if ckpt else ""), "label": label,
                    "ours": [BIN, *args], "theirs": [*ref, *args], "metric": "median_s",
                    "rounds": 1 if (q or ckpt) else 2, "target": None if ckpt else 1.0})
    out += busy_cases(tiny, ref, q)
    steps = 20 if q else 500
    run_yaml = recipe_config(tiny, steps)
    out.append({
        "id": "tiny-recipe", "label": f"tiny: whole recipe, photos to LoRA, {steps} steps",
        "ours": [MOSLORA, "train", run_yaml, "--adapter", "lora"],
        "theirs": [*ref, "recipe", "--model", tiny, "--images", ROOT / "assets" / "subject",
                   "--prompt", "a photo of sks toy", "--adapter", "lora", "--resolution", "64",
                   "--steps", str(steps), "--threads", str(THREADS),
                   "--out", BENCH / "recipe" / "reference-out"],
        "metric": "wall_s", "rounds": 1 if q else 2, "target": 0.7})
    ours_adapter, their_adapter = sample_adapters(small)
    size, sample_steps = ("128", "5") if q else ("256", "50")
    common_s = ["--model", small, "--steps", sample_steps, "--guidance", "5", "--size", size,
                "--threads", str(THREADS)]
    out.append({
        "id": "small-sample",
        "label": f"small: one {sample_steps}-step {size} px image, guidance 5, MoSLoRA merged",
        "ours": [BIN, "sample", *common_s, "--adapter", ours_adapter],
        "theirs": [*ref, "sample", *common_s, "--lora", their_adapter],
        "metric": "image_s", "rounds": 1 if q else 3, "target": 1.0})
    return out


def busy_cases(tiny, ref, q):
    """A MoSLoRA training step (batch 4, 64 px) on the tiny test model and on the toy
    world's model, and 6 toy images (64 px, 4 steps, guidance 4), each side with its own
    default threads and OpenMP wait policy, quiet and beside a CPU hog."""
    toy = ROOT / "assets" / "toy-model"
    steps = ["--warmup", "1" if q else "3", "--steps", "3" if q else "15"]
    out = []
    for load in ["quiet", "hog"]:
        common = {"metric": "median_s", "rounds": 1 if q else 3, "target": None,
                  "busy": load}
        for name, model in [("tiny", tiny), ("toy", toy)]:
            args = ["train-step", "--model", model, "--adapter", "moslora", "--resolution",
                    "64", "--rank", "4", "--batch", "4", *steps]
            out.append({"id": f"busy-{name}-step-{load}",
                        "label": f"{name}: training step, MoSLoRA, batch 4, 64 px",
                        "ours": [BIN, *args], "theirs": [*ref, *args], **common})
        args = ["sample", "--model", toy, "--steps", "4", "--guidance", "4", "--size", "64",
                "--images", "2" if q else "6"]
        out.append({"id": f"busy-toy-render-{load}",
                    "label": f"toy: {'2' if q else '6'} images, 64 px, 4 steps, guidance 4",
                    "ours": [BIN, *args], "theirs": [*ref, *args],
                    **{**common, "metric": "image_s"}})
    return out


def kind_label(kind):
    return {"lora": "LoRA", "moslora": "MoSLoRA"}[kind]


def seconds_of(run, metric):
    if metric == "wall_s":
        return run["wall_s"]
    return run["result"][metric]


def measure(case):
    rounds = int(os.environ.get("BENCH_ROUNDS") or case["rounds"])
    runs = {"ours": [], "theirs": []}
    for r in range(rounds):
        for side in ["ours", "theirs"]:
            who = "moslora" if side == "ours" else "reference"
            for attempt in range(1 + RETRIES):
                log(f"  {case['id']} round {r + 1}/{rounds}: {who}")
                hog = case.get("busy") == "hog"
                res = run_measured(case[side], hog=hog)
                log(f"    {seconds_of(res, case['metric']):.3f} s, CPU {res['cpu_s']:.2f} s, "
                    f"peak {res['peak_rss_mib']:.0f} MiB, other processes "
                    f"{res['others_cores']:.2f} cores")
                # Another process took CPU time during the run (a shared machine): measure
                # again rather than report its interference (the hog's is intended).
                if hog or res["others_cores"] <= CONTENDED or attempt == RETRIES:
                    break
                log("    contended: again")
            runs[side].append(res)
    return runs


def summary(case, runs):
    t = {s: statistics.median(seconds_of(r, case["metric"]) for r in runs[s]) for s in runs}
    mem = {s: statistics.median(r["peak_rss_mib"] for r in runs[s]) for s in runs}
    load = max(r["load1"] for s in runs for r in runs[s])
    others = max(r["others_cores"] for s in runs for r in runs[s])
    cpu = {s: statistics.median(r["cpu_s"] for r in runs[s]) for s in runs}
    threads = {s: sorted({(r["result"] or {}).get("threads") for r in runs[s]} - {None})
               for s in runs}
    return {"id": case["id"], "label": case["label"], "target": case["target"],
            "busy": case.get("busy"), "ours_cpu_s": cpu["ours"], "theirs_cpu_s": cpu["theirs"],
            "ours_threads": threads["ours"], "theirs_threads": threads["theirs"],
            "rounds": len(runs["ours"]), "ours_s": t["ours"], "theirs_s": t["theirs"],
            "time_ratio": t["ours"] / t["theirs"], "ours_mib": mem["ours"],
            "theirs_mib": mem["theirs"], "mem_ratio": mem["ours"] / mem["theirs"],
            "max_load1": load, "max_others_cores": others}


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
    versions = subprocess.run(
        [PY, "-c", "import torch, diffusers, peft, transformers; print(torch.__version__, "
         "diffusers.__version__, peft.__version__, transformers.__version__)"],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    ).stdout.split()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "threads": THREADS,
            "kernel": platform.release(), "torch": versions[0] if versions else "?",
            "diffusers": versions[1] if len(versions) > 1 else "?",
            "peft": versions[2] if len(versions) > 2 else "?",
            "transformers": versions[3] if len(versions) > 3 else "?", "commit": commit}


def fmt_s(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def table(rows):
    lines = ["| case | moslora | reference | time ratio | moslora peak RSS | reference peak RSS "
             "| memory ratio | target (ratio) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        target = f"<= {r['target']}" if r["target"] else "-"
        lines.append(
            f"| {r['label']} | {fmt_s(r['ours_s'])} | {fmt_s(r['theirs_s'])} | "
            f"**{r['time_ratio']:.2f}** | {r['ours_mib']:.0f} MiB | {r['theirs_mib']:.0f} MiB | "
            f"**{r['mem_ratio']:.2f}** | {target} |")
    return "\n".join(lines)


def busy_table(rows):
    lines = ["| case | load | moslora | reference | time ratio | moslora CPU | reference CPU "
             "| CPU ratio | threads (moslora / reference) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        load = "quiet" if r["busy"] == "quiet" else f"beside {HOG_LOOPS} busy loops"
        th = "/".join(",".join(map(str, r[k])) or "?" for k in ["ours_threads", "theirs_threads"])
        lines.append(
            f"| {r['label']} | {load} | {fmt_s(r['ours_s'])} | {fmt_s(r['theirs_s'])} | "
            f"**{r['time_ratio']:.2f}** | {r['ours_cpu_s']:.2f} s | {r['theirs_cpu_s']:.2f} s | "
            f"{r['ours_cpu_s'] / r['theirs_cpu_s']:.2f} | {th} |")
    return "\n".join(lines)


def checkpointing_line(rows):
    by = {r["id"]: r for r in rows}
    if "small-step-moslora" not in by or "small-step-moslora-ckpt" not in by:
        return ""
    a, b = by["small-step-moslora"], by["small-step-moslora-ckpt"]
    return ("Gradient checkpointing (small, MoSLoRA, batch 4): peak memory "
            f"{b['ours_mib']:.0f} / {a['ours_mib']:.0f} MiB = **{b['ours_mib'] / a['ours_mib']:.2f}x**"
            f" for moslora (time {b['ours_s'] / a['ours_s']:.2f}x), "
            f"{b['theirs_mib']:.0f} / {a['theirs_mib']:.0f} MiB = "
            f"{b['theirs_mib'] / a['theirs_mib']:.2f}x for the reference "
            f"(time {b['theirs_s'] / a['theirs_s']:.2f}x). Target: at most 0.6x.")


def main():
    if not BIN.exists() or not MOSLORA.exists():
        raise SystemExit("build first: cargo build --release (make bench does)")
    BENCH.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now()
    info = machine()
    log(f"bench: {info['cpu']}, {info['nproc']} cores, {THREADS} threads"
        + (" (BENCH_QUICK)" if QUICK else ""))
    # The SDXL models are made only for the cases that use them.
    m = None if ONLY and all(c.startswith("score") for c in ONLY) else models()
    rows, raw = [], {}
    for case in cases(m):
        if ONLY and case["id"] not in ONLY:
            continue
        log(case["label"])
        runs = measure(case)
        raw[case["id"]] = runs
        rows.append(summary(case, runs))
    took = (datetime.datetime.now() - started).total_seconds()
    date = started.strftime("%Y-%m-%d")
    head = (f"# CPU benchmark, {date}{' (BENCH_QUICK smoke run: not for quoting)' if QUICK else ''}\n\n"
            f"- machine: {info['cpu']}, {info['nproc']} cores (`nproc`), {info['memory']} memory, "
            f"Linux {info['kernel']}\n"
            f"- threads: {THREADS} on both sides (OMP_NUM_THREADS, `tch::set_num_threads`, "
            f"`torch.set_num_threads`)\n"
            f"- moslora {info['commit']} (tch 0.24, libtorch {info['torch']}); reference: "
            f"diffusers {info['diffusers']}, peft {info['peft']}, transformers "
            f"{info['transformers']}, torch {info['torch']}\n"
            f"- models: `configs/tiny` (8.0M-parameter UNet) and `bench/configs/small` "
            f"(201M-parameter UNet: channels 128/256/512, transformer depths 1/2/4, "
            f"cross-attention 512), random weights written once by diffusers and loaded by both\n"
            f"- runs alternate moslora / reference; each number is the median over rounds "
            f"(training steps: of each run's median step after warm-up); peak RSS: the "
            f"process's maximum resident memory (`wait4`), one case per process\n"
            f"- interference: a run during which other processes used more than {CONTENDED} "
            f"cores was measured again (up to {RETRIES} times); the most any kept run saw: "
            f"{max([r['max_others_cores'] for r in rows if r.get('busy') != 'hog'] or [0]):.2f} cores (the hog's runs aside); whole benchmark: "
            f"{took / 60:.1f} min\n")
    plain = [r for r in rows if not r.get("busy")]
    busy = [r for r in rows if r.get("busy")]
    body = "\n".join([head, table(plain) if plain else "", "", checkpointing_line(plain), ""])
    if busy:
        body += ("\n## Busy machine\n\nEach side with its own defaults (moslora: `threads: "
                 "auto`, passive OpenMP wait; reference: torch's threads, OpenMP's default "
                 "wait); CPU: the process's user + system time, start-up included.\n\n"
                 + busy_table(busy) + "\n")
    print(body)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = OUT / f"cpu-{date}{'-quick' if QUICK else ''}"
    stem.with_suffix(".md").write_text(body)
    stem.with_suffix(".json").write_text(json.dumps(
        {"machine": info, "quick": QUICK, "rows": rows, "runs": raw}, indent=1, default=str))
    log(f"written: {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
