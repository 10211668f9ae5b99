#!/usr/bin/env python3
"""Validates `onebit plan` against the shaped network (root): calibrates once with
`onebit bench allreduce --calibration`, then for other configurations (link rate, buffer size,
workers) measures both allreduces with `onebit bench allreduce --rate` and puts plan's predictions,
made from that calibration alone, beside them. Writes one JSON file with every number and the
relative errors; the per-run JSON of every benchmark lands next to it.

  bench/validate_plan.py --onebit build/onebit --out-dir bench/results/<machine>
"""
import argparse
import json
import os
import subprocess
import sys
import time

# The calibration point, then the configurations predicted from it: each changes the link rate,
# the size and/or the number of workers. All are measured in the same session as the calibration.
CALIBRATION = {"rate": "1gbit", "workers": 4, "elements": 25_000_000}
CONFIGURATIONS = [
    {"rate": "100mbit", "workers": 4, "elements": 25_000_000},
    {"rate": "1gbit", "workers": 2, "elements": 10_000_000},
    {"rate": "300mbit", "workers": 3, "elements": 5_000_000},
    {"rate": "100mbit", "workers": 2, "elements": 10_000_000},
]


def run(cmd, timeout):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.DEVNULL)


def load(path):
    with open(path) as f:
        return json.load(f)


def bench(args, cfg, out, calibration=None):
    cmd = [args.onebit, "bench", "allreduce", "--backend", args.backend, "--rate", cfg["rate"],
           "--workers", str(cfg["workers"]), "--elements", str(cfg["elements"]),
           "--repeats", str(args.repeats), "--timeout", str(args.timeout), "--json", "--out", out]
    if calibration:
        cmd += ["--calibration", calibration]
    run(cmd, args.timeout + 60)
    return load(out)


def plan(args, cfg, calibration):
    cmd = [args.onebit, "plan", "--params", str(cfg["elements"]), "--workers", str(cfg["workers"]),
           "--bandwidth", cfg["rate"], "--calibration", calibration, "--shared-cores", str(os.cpu_count()),
           "--json"]
    print("+", " ".join(cmd), flush=True)
    return json.loads(subprocess.run(cmd, check=True, timeout=60, capture_output=True, text=True).stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onebit", default="build/onebit")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--backend", default="gloo", choices=["gloo", "mpi"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark run")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("validate_plan.py: needs root (network namespaces, tc)")
    os.makedirs(args.out_dir, exist_ok=True)
    name = lambda c: f"allreduce_{args.backend}_{c['workers']}w_{c['rate']}_{c['elements']}"
    load_before = os.getloadavg()
    started = time.time()

    cal_file = os.path.join(args.out_dir, f"calibration_{args.backend}_{CALIBRATION['rate']}.json")
    cal_bench = bench(args, CALIBRATION, os.path.join(args.out_dir, name(CALIBRATION) + ".json"), cal_file)
    rows = []
    for cfg in CONFIGURATIONS:
        file = name(cfg) + ".json"
        m = bench(args, cfg, os.path.join(args.out_dir, file))
        pr = plan(args, cfg, cal_file)
        measured = {"fp32": m["seconds"]["fp32"], "compressed": m["seconds"]["compressed"]}
        predicted = {"fp32": pr["lamb_fp32"]["comm_seconds_per_step"],
                     "compressed": pr["onebit_lamb"]["comm_seconds_per_step"]}
        rows.append({**cfg, "bench_file": file,
                     "measured_seconds": measured, "predicted_seconds": predicted,
                     "relative_error": {k: predicted[k] / measured[k] - 1 for k in measured},
                     "measured_speedup": measured["fp32"] / measured["compressed"],
                     "predicted_speedup": predicted["fp32"] / predicted["compressed"]})
    worst = max(abs(e) for r in rows for e in r["relative_error"].values())
    result = {
        "bench": "plan validation",
        "backend": args.backend,
        "method": "constants fit at the calibration point only (three sizes there); every configuration below "
                  "is predicted from them by `onebit plan` and measured by `onebit bench allreduce --rate` "
                  "in the same session; seconds are the slowest rank's median per allreduce",
        "calibration_point": {**CALIBRATION, "bench_file": name(CALIBRATION) + ".json"},
        "calibration": load(cal_file),
        "configurations": rows,
        "max_abs_relative_error": worst,
        "within_20_percent": worst <= 0.20,
        "machine": cal_bench["machine"],
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": time.time() - started,
    }
    out = os.path.join(args.out_dir, f"plan_validation_{args.backend}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    for r in rows:
        print(f"{r['rate']:>8} {r['workers']}w {r['elements']:>10}: fp32 {r['measured_seconds']['fp32']:.3f}s "
              f"(plan {r['predicted_seconds']['fp32']:.3f}s, {100 * r['relative_error']['fp32']:+.1f}%)  "
              f"1-bit {r['measured_seconds']['compressed']:.3f}s (plan {r['predicted_seconds']['compressed']:.3f}s, "
              f"{100 * r['relative_error']['compressed']:+.1f}%)")
    print(f"worst |error| {100 * worst:.1f}% -> {out}")


if __name__ == "__main__":
    main()
