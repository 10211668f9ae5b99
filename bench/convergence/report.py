"""The convergence study's outputs (bench/convergence/run.py): the statistics of a method against the
baseline, the pictures, and the files written atomically (a temporary file, then a rename).

Imported by run.py from its own directory; knows nothing of the regimes and methods but what the
records it is given hold.
"""
import json
import os
import tempfile

import matplotlib
import matplotlib.patches
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def atomic(path, write):
    """write(tmp) to a temporary file next to path, then a rename: never a half-written file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2) + "\n")
    atomic(path, write)


def save_fig(fig, path):
    atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def stats(runs, base):
    """A method's numbers against the baseline's runs of the same seeds (both finished)."""
    ok = {r["seed"]: r for r in runs if r["status"] == "ok"}
    pairs = [(ok[s], base[s]) for s in sorted(ok) if s in base]
    out = {"seeds": len(pairs), "freeze_step": [ok[s]["freeze_step"] for s in sorted(ok)],
           "not_ok": {str(r["seed"]): f"{r['status']}: {r['reason']}" for r in runs if r["status"] != "ok"}}
    if not pairs:
        return dict(out, gap=None, spread=None, std=None, byte_ratio=None, final_heldout_loss=None)
    gaps = np.array([m["final_heldout_loss"] / b["final_heldout_loss"] - 1 for m, b in pairs])
    ratios = [b["bytes_sent"] / m["bytes_sent"] for m, b in pairs if m["bytes_sent"]]
    return dict(out, gap=float(gaps.mean()), spread=[float(gaps.min()), float(gaps.max())],
                std=float(gaps.std(ddof=1)) if len(gaps) > 1 else 0.0,
                byte_ratio=float(np.mean(ratios)) if ratios else None,
                final_heldout_loss=float(np.mean([m["final_heldout_loss"] for m, _ in pairs])))


def plot_regime(rep, path, colors, baseline):
    """<regime>.png: held-out loss against samples per method (mean over seeds, min-max band, freeze
    steps marked), the whole run and the second half zoomed; colors: method -> color."""
    fig, (ax, zx) = plt.subplots(1, 2, figsize=(13, 4.8))
    batch, tails = rep["settings"]["batch"], []
    tail_from = max([x for rs in rep["runs"].values() for r in rs for x, _ in r.get("curve", [])], default=0) / 2
    for name, runs in rep["runs"].items():
        ok = [r for r in runs if r["status"] == "ok" and r["curve"]]
        if not ok:
            continue
        xs = sorted(set.intersection(*[{x for x, _ in r["curve"]} for r in ok]))
        ys = np.array([[dict(r["curve"])[x] for x in xs] for r in ok])
        mean, st, c = ys.mean(0), rep["methods"][name], colors[name]
        tails += [y for x, lo, hi in zip(xs, ys.min(0), ys.max(0)) if x >= tail_from for y in (lo, hi)]
        label = name if name == baseline or st["gap"] is None else \
            f"{name}: {st['gap'] * 100:+.2f}%, {st['byte_ratio'] or 0:.1f}x fewer bytes"
        for a in (ax, zx):
            a.plot(xs, mean, color=c, label=label, marker="o", markersize=2.5)
            a.fill_between(xs, ys.min(0), ys.max(0), color=c, alpha=0.2, linewidth=0)
            for fs in sorted({r["freeze_step"] for r in ok if r["freeze_step"]}):
                a.plot(fs * batch, np.interp(fs * batch, xs, mean), marker="v", markersize=9, color=c,
                       markeredgecolor="black")
    zx.set_xlim(left=tail_from)
    if tails:
        pad = (max(tails) - min(tails)) * 0.1 + 1e-3
        zx.set_ylim(min(tails) - pad, max(tails) + pad)
    s = rep["settings"]
    what = f"{s.get('model', '')} BERT MLM" if s["kind"] == "bert" else "causal LM"
    n = len(rep["seeds"])
    fig.suptitle(f"{rep['name']}: {what}, {s['workers']} workers, batch {s['batch']}, {s['steps']} steps — held-out "
                 f"loss, mean of {n} seed{'s' * (n > 1)}{' (quick)' if rep['quick'] else ''}, band min-max, "
                 "▼ freeze step", fontsize=10)
    ax.set_title("whole run", fontsize=9)
    zx.set_title("second half (zoom)", fontsize=9)
    for a in (ax, zx):
        a.set_xlabel("training samples (sequences)")
        a.grid(alpha=0.3)
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=8)
    save_fig(fig, path)


def plot_summary(summary, path, colors, baseline):
    """summary.png: each method's loss gap to the baseline against the bytes it saves, per regime."""
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    names = dict.fromkeys(m for r in summary["regimes"] for m in r["methods"] if m != baseline)
    markers = "osD^vP*Xhp<>"
    xmax = 4.0
    for j, r in enumerate(summary["regimes"]):
        for m, st in r["methods"].items():
            if m == baseline or st["gap"] is None or not st["byte_ratio"]:
                continue
            g, (lo, hi) = st["gap"] * 100, (v * 100 for v in st["spread"])
            ax.errorbar(st["byte_ratio"], g, yerr=[[g - lo], [hi - g]], fmt=markers[j % len(markers)],
                        color=colors[m], capsize=3, markersize=7)
            xmax = max(xmax, st["byte_ratio"])
    ax.plot(1, 0, marker="*", color="black", markersize=12, linestyle="none")
    ax.axhspan(-1, 1, color="green", alpha=0.12)
    ax.axvline(4, color="gray", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(0.8, xmax * 1.6)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 2, 4, 8, 16, 32, 64]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    handles = [plt.Line2D([], [], color="black", marker="*", linestyle="none", markersize=10, label="LAMB")]
    handles += [matplotlib.patches.Patch(color=colors[m], label=m) for m in names]
    handles += [plt.Line2D([], [], color="gray", marker=markers[j % len(markers)], linestyle="none", label=r["name"])
                for j, r in enumerate(summary["regimes"])]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("bytes saved: LAMB's bytes sent / the method's (whole run, per worker)")
    ax.set_ylabel("held-out loss gap to LAMB (%), bars: seed min-max")
    n = len(summary["seeds"])
    ax.set_title(f"Convergence study, {summary['machine']} ({n} seed{'s' * (n > 1)}"
                 f"{', quick' if summary['quick'] else ''}): band ±1%, line at 4x", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    save_fig(fig, path)
