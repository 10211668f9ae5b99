#!/usr/bin/env python3
"""Validates `onebit plan --from-run` against whole training runs on the shaped network (root).

Runs `onebit compare` (mini BERT, 4 workers, 60 steps of 8 sequences of 16 tokens) three times: over
loopback, and with every worker's link shaped to 100 Mbit/s and to 1 Gbit/s. From the loopback
run's directories alone (its compute per step and its stages) and the committed calibration,
`onebit plan --from-run` predicts 1-bit LAMB's speedup over LAMB on each shaped link; the shaped
runs measure it (training samples/s, 1-bit LAMB over LAMB). Writes plan_from_run_validation.json
with every number, and keeps the shaped runs' compare.json and picture in compare_100mbit/ and
compare_1gbit/ beside it (the run directories themselves are deleted).

  bench/validate_plan_run.py --onebit build/onebit --out-dir bench/results/<machine>
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

COMPARE = ["--model", "mini", "--workers", "4", "--seq", "16", "--batch", "8", "--steps", "60", "--no-progress"]
RATES = ["100mbit", "1gbit"]
BAR = 0.15  # |predicted / measured - 1| for the speedup


def run(cmd, timeout):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, timeout=timeout, stdout=subprocess.PIPE, text=True).stdout


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onebit", default="build/onebit")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--calibration", help="default: OUT_DIR/calibration_gloo_1gbit.json")
    ap.add_argument("--shared-cores", type=int, default=os.cpu_count())
    ap.add_argument("--work", help="keep the runs here and reuse the ones already there (default: a temporary "
                                   "folder, deleted at the end)")
    a = ap.parse_args()
    calibration = a.calibration or os.path.join(a.out_dir, "calibration_gloo_1gbit.json")
    if not os.path.exists(calibration):
        sys.exit(f"validate_plan_run: no calibration at {calibration} (bench/validate_plan.py writes it)")
    if os.geteuid() != 0:
        sys.exit("validate_plan_run: the shaped links need root (onebit lan)")
    work = a.work or tempfile.mkdtemp(prefix="onebit-plan-run-")

    def compare(out, *extra):
        if not os.path.exists(os.path.join(out, "compare.json")):
            run([a.onebit, "compare", *COMPARE, *extra, "--out", out], 3600)

    try:
        loop = os.path.join(work, "loopback")
        compare(loop)
        rows = []
        for rate in RATES:
            shaped = os.path.join(work, rate)
            compare(shaped, "--rate", rate)
            measured = load(os.path.join(shaped, "compare.json"))
            predicted = {}
            for name in ("onebit-lamb", "lamb"):  # from the 1-bit run, and from LAMB's run alone
                out = run([a.onebit, "plan", "--from-run", os.path.join(loop, name), "--bandwidth", rate,
                           "--calibration", calibration, "--shared-cores", str(a.shared_cores), "--json"], 120)
                predicted[name] = json.loads(out)
            speedup = measured["ratios"]["samples_per_second"]  # 1-bit LAMB's over LAMB's
            p = predicted["onebit-lamb"]["speedup"]
            rows.append({
                "rate": rate,
                "measured": {"speedup": speedup,
                             "lamb_samples_per_second": measured["lamb"]["samples_per_second"],
                             "onebit_samples_per_second": measured["onebit_lamb"]["samples_per_second"],
                             "compare": f"compare_{rate}/compare.json"},
                "predicted_from_onebit_run": predicted["onebit-lamb"],
                "predicted_from_lamb_run": predicted["lamb"],
                "relative_error": p / speedup - 1,
                "relative_error_from_lamb_run": predicted["lamb"]["speedup"] / speedup - 1,
                "within_bar": abs(p / speedup - 1) <= BAR,
            })
            keep = os.path.join(a.out_dir, f"compare_{rate}")
            os.makedirs(keep, exist_ok=True)
            for f in ("compare.json", "loss_vs_samples.png"):
                shutil.copy(os.path.join(shaped, f), os.path.join(keep, f))
            print(f"{rate}: measured {speedup:.2f}x, predicted {p:.2f}x ({100 * (p / speedup - 1):+.1f}%)", flush=True)
        loadavg = os.getloadavg()
        report = {
            "bench": "plan --from-run validation",
            "method": "one loopback `onebit compare` gives the runs; `onebit plan --from-run` replays each on a shaped "
                      "link with the committed calibration; `onebit compare --rate` measures the same job there",
            "compare_args": COMPARE,
            "calibration": os.path.basename(calibration),
            "shared_cores": a.shared_cores,
            "loopback": {"lamb_samples_per_second": load(os.path.join(loop, "compare.json"))["lamb"]["samples_per_second"],
                         "onebit_samples_per_second": load(os.path.join(loop, "compare.json"))["onebit_lamb"]["samples_per_second"]},
            "bar": BAR,
            "rates": rows,
            "load_average_after": loadavg,
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        }
        path = os.path.join(a.out_dir, "plan_from_run_validation.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print("wrote", path)
    except BaseException:
        print(f"validate_plan_run: the runs so far are kept in {work} (--work {work} reuses them)", file=sys.stderr)
        raise
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
