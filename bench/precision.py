#!/usr/bin/python3
"""`onebit train --precision bf16` against fp32 on the same run: training samples/s and the final
held-out loss, runs alternated, medians over --repeats. Writes one JSON file (--out).

Usage: bench/precision.py [--onebit build/onebit] [--model mini] [--repeats 3] --out FILE
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile


def run(onebit, model, steps, batch, precision, out_dir):
    cmd = [onebit, "train", "--workers", "1", "--model", model, "--steps", str(steps), "--batch", str(batch),
           "--eval-samples", "32", "--optimizer", "lamb", "--precision", precision, "--out", out_dir,
           "--no-progress"]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1800)
    if done.returncode:
        sys.exit("precision.py: %s failed:\n%s" % (" ".join(cmd), done.stderr[-2000:]))
    with open(os.path.join(out_dir, "summary.json")) as f:
        s = json.load(f)
    return {"samples_per_second": s["samples_per_second"], "heldout_loss": s["final_heldout_loss"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onebit", default="build/onebit")
    p.add_argument("--model", default="mini")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    runs = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        run(a.onebit, a.model, 1, a.batch, "fp32", os.path.join(tmp, "warm"))  # tokenizer and token cache
        for i in range(a.repeats):
            for precision in runs:
                runs[precision].append(run(a.onebit, a.model, a.steps, a.batch, precision,
                                           os.path.join(tmp, "%s-%d" % (precision, i))))
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("samples_per_second", "heldout_loss")}
           for k, v in runs.items()}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    result = {
        "bench": "precision", "date": datetime.date.today().isoformat(),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "bf16_instructions": "avx512_bf16" in open("/proc/cpuinfo").read(),
                    "platform": platform.platform()},
        "settings": {"model": a.model, "steps": a.steps, "batch": a.batch, "workers": 1, "optimizer": "lamb",
                     "repeats": a.repeats},
        "runs": runs, "median": med,
        "speedup": med["bf16"]["samples_per_second"] / med["fp32"]["samples_per_second"],
        "heldout_loss_ratio": med["bf16"]["heldout_loss"] / med["fp32"]["heldout_loss"],
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print("precision.py: bf16 %.1f samples/s, fp32 %.1f: %.2fx; held-out loss ratio %.5f -> %s" % (
        med["bf16"]["samples_per_second"], med["fp32"]["samples_per_second"], result["speedup"],
        result["heldout_loss_ratio"], a.out))


if __name__ == "__main__":
    main()
