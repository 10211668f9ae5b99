# Draws loss_vs_samples.png for `onebit compare`: held-out loss of LAMB and 1-bit LAMB against
# training samples with the stage switch marked, and the bytes each sent. Usage: plot_compare.py DIR
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def curve(path, key):
    xs, ys = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if key in r:
                xs.append(r["samples"])
                ys.append(r[key])
    return xs, ys


def main(d):
    with open(os.path.join(d, "compare.json")) as f:
        c = json.load(f)
    runs = [("LAMB", "lamb", "tab:blue"), ("1-bit LAMB", "onebit-lamb", "tab:orange")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    for label, name, color in runs:
        metrics = os.path.join(d, c[name.replace("-", "_")]["dir"], "metrics.jsonl")
        xs, ys = curve(metrics, "heldout_loss")
        ax.plot(xs, ys, marker="o", markersize=3, label=label, color=color)
        xs, bs = curve(metrics, "total_bytes_sent")
        bx.plot(xs, [b / 1e6 for b in bs], label=label, color=color)
    switch = c["settings"]["freeze_samples"]
    for a in (ax, bx):
        a.axvline(switch, color="gray", linestyle="--", linewidth=1)
        a.set_xlabel("training samples (sequences)")
        a.grid(alpha=0.3)
    ax.text(switch, ax.get_ylim()[1], " 1-bit LAMB: warmup | compression", va="top", fontsize=8, color="gray")
    ax.set_ylabel("held-out masked-LM loss")
    ax.set_title("held-out loss: 1-bit / LAMB = %.4f" % c["ratios"]["heldout_loss"])
    bx.set_ylabel("MB sent per worker (cumulative)")
    bx.set_title("communication: %.2fx fewer bytes with 1-bit LAMB" % c["ratios"]["bytes_sent"])
    ax.legend()
    bx.legend()
    s = c["settings"]
    fig.suptitle("onebit compare: %s BERT, %d workers (%s), %d steps x %d sequences of %d tokens"
                 % (s["model"], s["workers"], s["backend"], s["steps"], s["batch"], s["seq"]))
    fig.tight_layout()
    fig.savefig(os.path.join(d, "loss_vs_samples.png"), dpi=120)


if __name__ == "__main__":
    main(sys.argv[1])
