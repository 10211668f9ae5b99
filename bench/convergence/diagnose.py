#!/usr/bin/python3
"""Why 1-bit LAMB falls behind: per layer and step, the trust ratio each optimizer applied.

Reads the layers.jsonl of runs made with `onebit train --log-layers` (LAMB: its trust ratio ||w||/||u||;
1-bit LAMB: the same in warmup, then c_freeze x factor, with the factor before and after its clamps)
and draws, for the layers that carry most parameters and a few small ones, the applied ratio of
each run against steps, and the fraction of layers whose factor sits at a clamp. Writes a PNG and
a JSON of the numbers it drew.

    bench/convergence/diagnose.py --run LAMB=out/lamb --run "1-bit LAMB"=out/onebit --out diag.png
"""
import argparse
import json
import os
import sys


def load(path):
    with open(os.path.join(path, "layers.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    if not recs or "layers" not in recs[0]:
        sys.exit(f"diagnose: {path}/layers.jsonl has no header line (was the run made with --log-layers?)")
    return recs[0]["layers"], [r for r in recs[1:] if "trust" in r]


def clamp_share(rec, lo=0.5, hi=4.0):
    f = rec.get("factor")
    if not f:
        return None
    at = sum(1 for x in f if abs(x - lo) < 1e-6 or abs(x - hi) < 1e-6)
    return at / len(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR")
    ap.add_argument("--layers", nargs="*", help="layer names to draw (default: a chosen few)")
    ap.add_argument("--factor-min", type=float, default=0.5)
    ap.add_argument("--factor-max", type=float, default=4.0)
    ap.add_argument("--out", required=True, help="PNG to write (a .json beside it holds the numbers)")
    a = ap.parse_args()
    runs = []
    for spec in a.run:
        label, _, path = spec.partition("=")
        if not path:
            sys.exit(f"diagnose: --run wants LABEL=DIR, got {spec!r}")
        names, recs = load(path)
        runs.append((label, names, recs))
    names = runs[0][1]
    want = a.layers or [n for n in ("word_embeddings.weight", "layer0_attention_query.weight",
                                    "layer1_ffn_in.weight", "layer1_attention_norm.weight",
                                    "mlm_norm.weight", "embeddings_norm.bias") if n in names][:6]
    if not want:
        want = names[:6]
    missing = [n for n in want if n not in names]
    if missing:
        sys.exit(f"diagnose: no layer named {', '.join(missing)}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(want) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    numbers = {"layers": {}, "clamped_share": {}}
    for k, name in enumerate(want):
        ax = axes[k // cols][k % cols]
        i = names.index(name)
        numbers["layers"][name] = {}
        for label, _, recs in runs:
            steps = [r["step"] for r in recs]
            trust = [r["trust"][i] for r in recs]
            ax.plot(steps, trust, label=label, lw=1.2)
            numbers["layers"][name][label] = list(zip(steps, trust))
            raw = [(r["step"], r["raw_factor"][i] * r["c_freeze"][i]) for r in recs if "raw_factor" in r]
            if raw:
                ax.plot(*zip(*raw), ls=":", lw=0.8, label=f"{label}: c_freeze x factor before clamps")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("trust ratio applied")
        if k == 0:
            ax.legend(fontsize=7)
    ax = axes[len(want) // cols][len(want) % cols]
    for label, _, recs in runs:
        pts = [(r["step"], clamp_share(r, a.factor_min, a.factor_max)) for r in recs]
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot(*zip(*pts), label=label)
            numbers["clamped_share"][label] = pts
    ax.set_title("share of layers whose factor sits at a clamp", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylim(-0.05, 1.05)
    if numbers["clamped_share"]:
        ax.legend(fontsize=7)
    for k in range(len(want) + 1, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(numbers, f)
    print(f"diagnose: wrote {a.out}")


if __name__ == "__main__":
    main()
