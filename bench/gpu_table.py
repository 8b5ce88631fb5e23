"""The table of bench/gpu.sh, from the JSON files its cases left in WORK.

    python bench/gpu_table.py WORK RESULTS DRY BATCH
"""

import datetime
import json
import subprocess
import sys
from pathlib import Path

# FACTS.md, "Compute figures": the SDXL UNet forward at 1024 px is about 6.8 TFLOP per image;
# LoRA training with a frozen base about twice that; sampling with guidance runs it twice per
# step.
TFLOP_FORWARD = 6.8
TFLOP_TRAIN = 13.5


def load(work, name):
    p = work / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def fmt(x, unit="", digits=3):
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def main():
    work, results, dry, batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", \
        int(sys.argv[4])
    rows = []
    for label, ours, theirs, metric, flop in [
        ("training step, MoSLoRA rank 4", "ours-step", "ref-step", "median_s",
         TFLOP_TRAIN * batch),
        ("training step, gradient checkpointing", "ours-step-ckpt", "ref-step-ckpt",
         "median_s", TFLOP_TRAIN * batch),
        ("one 50-step image, guidance 5, adapter merged", "ours-sample", "ref-sample",
         "image_s", TFLOP_FORWARD * 2 * 50),
    ]:
        o, t = load(work, ours), load(work, theirs)

        def sec(d):
            return None if not d or "failed" in d else d.get(metric)

        def mem(d):
            return None if not d else d.get("gpu_peak_mib")

        so, st = sec(o), sec(t)
        rows.append({
            "case": label, "moslora_s": so, "reference_s": st,
            "ratio": so / st if so and st else None,
            "moslora_tflops": None if dry or not so else flop / so,
            "reference_tflops": None if dry or not st else flop / st,
            "moslora_gpu_mib": mem(o), "reference_gpu_mib": mem(t),
            "reference_torch_peak_mib": (t or {}).get("peak_cuda_reserved_mib"),
            "moslora_rss_mib": (o or {}).get("peak_rss_mib"),
            "reference_rss_mib": (t or {}).get("peak_rss_mib"),
        })
    gpu = "CPU dry run (tiny model)"
    if not dry:
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                                  "--format=csv,noheader"], capture_output=True,
                                 text=True).stdout.strip()
        except OSError:
            gpu = "unknown GPU"
    date = datetime.date.today().isoformat()
    what = ("tiny model, 64 px, batch 2, f32 on the CPU: checks the script, not a measurement"
            if dry else "full-size SDXL UNet architecture, random weights, bf16, 1024 px, "
            f"batch {batch}")
    lines = [
        f"# GPU benchmark, {date}{' (dry run)' if dry else ''}", "",
        f"- device: {gpu}", f"- work: {what}",
        "- training: median seconds per step (forward, backward, clipping, AdamW) after 3 "
        "warm-up steps; TFLOP/s counts 13.5 TFLOP per image per step (FACTS.md)",
        "- image: prompt encoding, 50 Euler steps with classifier-free guidance (batch 2), VAE "
        "decode; TFLOP/s counts 2 x 50 x 6.8 TFLOP",
        "- GPU memory: the device's peak used memory while the case ran, minus its idle level "
        "(polled every 100 ms by nvidia-smi; allocator cache and CUDA context included)", "",
        "| case | moslora | reference | time ratio | moslora TFLOP/s | reference TFLOP/s "
        "| moslora GPU memory | reference GPU memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {fmt(r['moslora_s'], ' s')} | {fmt(r['reference_s'], ' s')} | "
            f"{fmt(r['ratio'], '', 2)} | {fmt(r['moslora_tflops'], '', 0)} | "
            f"{fmt(r['reference_tflops'], '', 0)} | {fmt(r['moslora_gpu_mib'], ' MiB', 0)} | "
            f"{fmt(r['reference_gpu_mib'], ' MiB', 0)} |")
    lines += ["", "Targets (issue 8): at most 0.25 s per training step, at most 1.5 s per image.",
              ""]
    text = "\n".join(lines)
    print(text)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"gpu-{date}{'-dry-run' if dry else ''}"
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "raw": {p.stem: json.loads(p.read_text())
                               for p in sorted(work.glob("*.json"))}}, indent=1))
    print(f"written: {stem.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
