#!/usr/bin/env python3
"""Overlap with backward on a shaped link: `onebit compare --rate R` with --overlap off and on (root).

The job of bench/validate_plan_run.py (mini BERT, 4 workers, 60 steps of 8 sequences of 16 tokens, the
defaults), at each rate, without and with the exchange of LAMB's steps and the warmup's started
during backward, --repeats times (off and on alternating). Writes OUT_DIR/overlap.json: per rate
and setting, each optimizer's whole-run samples/s (median and every run) and, from the first run, its
exchange time, the part of it backward hid and the held-out loss (the math does not depend on timing);
and the ratios on/off of the medians; and, from each setting's first run, the bound that 1-bit
LAMB's warmup sets: its speedup over LAMB if its compression steps cost their compute alone. The run
directories go to a temporary folder (or --work, which keeps and reuses them).

  bench/overlap.py --onebit build/onebit --out-dir bench/results/<machine> [--rates 1gbit,100mbit] [--repeats 3]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

COMPARE = ["--model", "mini", "--workers", "4", "--seq", "16", "--batch", "8", "--steps", "60", "--no-progress"]
RUNS = (("lamb", "lamb"), ("onebit_lamb", "onebit-lamb"))


def step_seconds(rec):
    """A step's time from its metrics line: compute, and the communication backward did not hide."""
    return rec["compute_seconds"] + rec["comm_seconds"] - rec.get("exchange_hidden_seconds", 0.0)


def bound_of(compare_dir):
    """1-bit LAMB's speedup over LAMB if its compression steps exchanged for free: LAMB's whole
    training time over 1-bit LAMB's warmup steps plus only the compute of its compression steps."""
    def steps(name):
        with open(os.path.join(compare_dir, name, "metrics.jsonl")) as f:
            return [r for r in map(json.loads, f) if "loss" in r]
    lamb, onebit = steps("lamb"), steps("onebit-lamb")
    warm = [r for r in onebit if r["stage"] == "warmup"]
    rest = [r for r in onebit if r["stage"] != "warmup"]
    lamb_s, warm_s = sum(map(step_seconds, lamb)), sum(map(step_seconds, warm))
    compute_s = sum(r["forward_backward_seconds"] + r["optimizer_seconds"] for r in rest)
    return {"warmup_steps": len(warm), "lamb_seconds": lamb_s, "warmup_seconds": warm_s,
            "compression_steps": len(rest), "compression_compute_seconds": compute_s,
            "compression_seconds": sum(map(step_seconds, rest)),
            "speedup_bound": lamb_s / (warm_s + compute_s)}


def run_of(compare_dir, key, name):
    c = json.load(open(os.path.join(compare_dir, "compare.json")))
    summary = json.load(open(os.path.join(compare_dir, name, "summary.json")))
    totals = summary["totals"]
    exchange = totals.get("exchange_seconds", 0.0)
    hidden = totals.get("exchange_hidden_seconds", 0.0)
    return {"samples_per_second": c[key]["samples_per_second"], "wall_seconds": c[key]["wall_seconds"],
            "heldout_loss": c[key]["heldout_loss"], "exchange_seconds": exchange,
            "exchange_hidden_seconds": hidden, "exchange_hidden_fraction": hidden / exchange if exchange else 0.0,
            "bytes_sent": c[key]["bytes_sent"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onebit", default="build/onebit")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--rates", default="1gbit,100mbit")
    ap.add_argument("--bucket-mb", default="4")
    ap.add_argument("--repeats", default="1", help="per rate, comma-separated when rates differ (e.g. 3,1)")
    ap.add_argument("--work", help="keep the runs here and reuse the ones already there")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="onebit-overlap-")
    os.makedirs(work, exist_ok=True)
    results = {}
    rates = a.rates.split(",")
    repeats = [int(x) for x in a.repeats.split(",")]
    repeats += [repeats[-1]] * (len(rates) - len(repeats))
    for rate, reps in zip(rates, repeats):
        runs = {"off": [], "on": []}
        for rep in range(reps):
            for overlap in ("off", "on"):
                out = os.path.join(work, f"{rate}_{overlap}_{rep}")
                if not os.path.exists(os.path.join(out, "compare.json")):
                    cmd = [a.onebit, "compare", *COMPARE, "--rate", rate, "--overlap", overlap, "--bucket-mb",
                           a.bucket_mb, "--out", out]
                    print("overlap:", " ".join(cmd), file=sys.stderr)
                    # compare exits 1 when only its picture failed; compare.json is what is read.
                    subprocess.run(cmd, timeout=3600, check=False)
                runs[overlap].append({key: run_of(out, key, name) for key, name in RUNS})
        results[rate] = {}
        for overlap, rs in runs.items():
            results[rate][overlap] = {key: dict(rs[0][key], samples_per_second=statistics.median(
                r[key]["samples_per_second"] for r in rs), samples_per_second_runs=[
                r[key]["samples_per_second"] for r in rs]) for key, _ in RUNS}
        on, off = results[rate]["on"], results[rate]["off"]
        results[rate]["ratios_on_over_off"] = {
            key: {"samples_per_second": on[key]["samples_per_second"] / off[key]["samples_per_second"],
                  "heldout_loss": on[key]["heldout_loss"] / off[key]["heldout_loss"]} for key, _ in RUNS}
        results[rate]["bound_free_compression_exchange"] = {
            s: bound_of(os.path.join(work, f"{rate}_{s}_0")) for s in ("off", "on")}
        results[rate]["speedup_onebit_over_lamb"] = {
            s: results[rate][s]["onebit_lamb"]["samples_per_second"] / results[rate][s]["lamb"]["samples_per_second"]
            for s in ("off", "on")}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    doc = {"bench": "overlap", "what": "onebit compare --rate R with --overlap off and on",
           "machine": {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node()},
           "compare_args": COMPARE + ["--bucket-mb", a.bucket_mb],
           "network": "onebit lan: one namespace per worker, tc tbf on each veth, both directions",
           "results": results}
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, "overlap.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    for rate, r in results.items():
        for key, _ in RUNS:
            x = r["ratios_on_over_off"][key]
            print(f"{rate} {key}: overlap on/off samples/s {x['samples_per_second']:.3f}, "
                  f"held-out loss {x['heldout_loss']:.4f}, hidden {r['on'][key]['exchange_hidden_fraction']:.2f} "
                  f"of the exchange")
        print(f"{rate}: 1-bit LAMB over LAMB {r['speedup_onebit_over_lamb']['off']:.2f}x off, "
              f"{r['speedup_onebit_over_lamb']['on']:.2f}x on; with free compression exchanges at most "
              f"{r['bound_free_compression_exchange']['off']['speedup_bound']:.2f}x off, "
              f"{r['bound_free_compression_exchange']['on']['speedup_bound']:.2f}x on")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
