#!/usr/bin/env python3
"""Writes bench/results/<gpu>-train.json from the GPU runs of bench/gpu/train_phase.sh.

Usage: train_results.py GPU_NAME RESULTS_DIR [--compare DIR] [--breakdown OPTIMIZER=DIR ...] [--adamw FILE]

--compare, a run of `onebit compare`: convergence.gap is 1-bit LAMB's final held-out loss over
LAMB's, minus 1; convergence.byte_ratio the whole run's bytes per worker, LAMB over 1-bit LAMB. The
held-out curves come from each run's metrics.jsonl; compare.json, the picture and both runs'
summaries are copied to <gpu>-train/.
--breakdown, runs of `onebit train`: step_breakdown.OPTIMIZER holds the median over the measured
steps (the first, which allocates and tunes, left out; for 1-bit LAMB its compression steps) of
forward+backward, the optimizer's own work and its exchange, in seconds and as fractions of the step.
--adamw, the file bench/gpu/adamw_peer.py wrote: step_breakdown.adamw_fused, torch's fused AdamW
step on the same parameters (the peer of the optimizer's own work), with each optimizer's own work
over it.
"""
import argparse
import json
import statistics
import os
import re
import shutil


def slug(name):
    """The device's file name, as the GPU benchmark spells it: lower-case words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def heldout_curve(metrics_path):
    curve = []
    with open(metrics_path) as f:
        for line in f:
            rec = json.loads(line)
            if "heldout_loss" in rec:
                curve.append([rec["samples"], rec["heldout_loss"]])
    return curve


def convergence(compare_dir):
    with open(os.path.join(compare_dir, "compare.json")) as f:
        c = json.load(f)
    lamb, onebit = c["lamb"], c["onebit_lamb"]
    return c, {
        "gap": onebit["heldout_loss"] / lamb["heldout_loss"] - 1,
        "byte_ratio": lamb["bytes_sent"] / onebit["bytes_sent"] if onebit["bytes_sent"] else None,
        "byte_ratio_vs_lamb_16bit": c["ratios"]["bytes_sent_vs_lamb_16bit"],
        "heldout_loss": {"lamb": lamb["heldout_loss"], "onebit_lamb": onebit["heldout_loss"]},
        "bytes_sent_per_worker": {"lamb": lamb["bytes_sent"], "onebit_lamb": onebit["bytes_sent"]},
        "wall_seconds": {"lamb": lamb["wall_seconds"], "onebit_lamb": onebit["wall_seconds"]},
        "heldout_curves": {name: heldout_curve(os.path.join(compare_dir, run["dir"], "metrics.jsonl"))
                           for name, run in (("lamb", lamb), ("onebit_lamb", onebit))},
    }


def breakdown(run_dir):
    steps = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("step", 0) >= 2 and "forward_backward_seconds" in rec and not rec.get("skipped"):
                steps.append(rec)
    if any(r["stage"] == "compression" for r in steps):
        steps = [r for r in steps if r["stage"] == "compression"]
    if not steps:
        raise SystemExit(f"train_results: {run_dir} has no measured step after the first")
    parts = ("forward_backward", "optimizer", "exchange")
    out = {p + "_seconds": statistics.median(r[p + "_seconds"] for r in steps) for p in parts}
    out["step_seconds"] = statistics.median(r["compute_seconds"] + r["comm_seconds"] for r in steps)
    for p in parts:
        out[p + "_fraction"] = out[p + "_seconds"] / out["step_seconds"]
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    out["steps_measured"] = len(steps)
    out["stage"] = steps[0]["stage"]
    out["settings"] = {k: summary["options"].get(k) for k in ("model", "batch", "micro_batch", "seq", "precision",
                                                               "backend", "device")}
    out["settings"]["workers"] = summary["world_size"]
    out["parameters"] = summary["parameters"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("gpu")
    ap.add_argument("results_dir")
    ap.add_argument("--compare")
    ap.add_argument("--breakdown", action="append", default=[], metavar="OPTIMIZER=DIR")
    ap.add_argument("--adamw")
    a = ap.parse_args()
    base = os.path.join(a.results_dir, slug(a.gpu) + "-train")
    out = {"device": a.gpu, "what": "onebit train and compare on one GPU (bench/gpu/train_phase.sh)"}
    if a.compare:
        c, out["convergence"] = convergence(a.compare)
        out["convergence_settings"] = c["settings"]
        os.makedirs(base, exist_ok=True)
        for name in ("compare.json", "loss_vs_samples.png"):
            if os.path.exists(os.path.join(a.compare, name)):
                shutil.copy(os.path.join(a.compare, name), base)
        for run in (c["lamb"], c["onebit_lamb"]):
            src = os.path.join(a.compare, run["dir"], "summary.json")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(base, os.path.basename(run["dir"]) + "-summary.json"))
        g = out["convergence"]
        print(f"{a.gpu}: convergence gap {g['gap']:+.4f}, {g['byte_ratio']:.2f}x fewer bytes")
    if a.breakdown:
        out["step_breakdown"] = {}
        for item in a.breakdown:
            name, _, run_dir = item.partition("=")
            b = out["step_breakdown"][name] = breakdown(run_dir)
            print(f"{a.gpu}: {name} step {b['step_seconds'] * 1e3:.1f} ms: forward+backward "
                  f"{b['forward_backward_fraction']:.2f}, optimizer {b['optimizer_fraction']:.2f}, "
                  f"exchange {b['exchange_fraction']:.2f}")
    if a.adamw:
        with open(a.adamw) as f:
            peer = json.load(f)
        sb = out.setdefault("step_breakdown", {})
        for name, b in sb.items():
            if b.get("parameters") and b["parameters"] != peer["parameters"]:
                print(f"{a.gpu}: warning: {name} has {b['parameters']} parameters, the AdamW peer {peer['parameters']}")
            b["optimizer_over_adamw_fused"] = b["optimizer_seconds"] * 1e3 / peer["ms_median"]
        sb["adamw_fused"] = peer
        print(f"{a.gpu}: fused AdamW step {peer['ms_median']:.2f} ms")
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"wrote {base}.json")


if __name__ == "__main__":
    main()
