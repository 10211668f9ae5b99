#!/usr/bin/python3
"""Builds the README's convergence table from bench/results/*/convergence/summary.json (written by
bench/convergence/run.py; never edited by hand)."""
import glob
import json
import os

from results_table import cli  # noqa: E402 (the same directory)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- convergence:begin -->", "<!-- convergence:end -->"
BASELINE = "lamb"


def load(path):
    with open(path) as f:
        return json.load(f)


def pct(v):
    """+0.4 / −0.1 (a true minus sign)."""
    return f"{v * 100:+.1f}".replace("-", "\u2212")


def cell(m):
    if m.get("gap") is None:
        bad = m.get("not_ok", {})
        return f"no result ({len(bad)} seed{'s' * (len(bad) != 1)} failed or missing)" if bad else "no result"
    lo, hi = m["spread"]
    ratio = f", {m['byte_ratio']:.1f}x fewer" if m.get("byte_ratio") else ""
    short = f", {m['seeds']} seed{'s' * (m['seeds'] != 1)} of {m['seeds'] + len(m.get('not_ok', {}))}" \
        if m.get("not_ok") else ""
    return f"{pct(m['gap'])}% ({pct(lo)}..{pct(hi)}){ratio}{short}"


def regime_label(r):
    s = r["settings"]
    what = f"{s.get('model', 'tiny')} BERT" if s["kind"] == "bert" else "causal LM"
    micro = f" (micro {s['micro_batch']})" if s.get("micro_batch") else ""
    return f"`{r['name']}`: {what}, {s['workers']} workers, batch {s['batch']}{micro}, {s['steps']} steps"


def study_table(path):
    s, d = load(path), os.path.dirname(path)
    methods = list(dict.fromkeys(m for r in s["regimes"] for m in r["methods"]))
    n = len(s["seeds"])
    out = [f"Machine `{os.path.basename(os.path.dirname(d))}`, {s['date'][:10]}, seeds "
           f"{', '.join(map(str, s['seeds']))}{' (quick study: one seed)' if s.get('quick') else ''}. "
           f"Each cell: the gap of the method's final held-out loss to {s.get('baseline', BASELINE).upper()}'s (same "
           f"regime and seed), mean (min..max over {n} seed{'s' * (n != 1)}), then LAMB's bytes sent / the "
           f"method's, whole run per worker ([summary.png]({os.path.relpath(os.path.join(d, 'summary.png'), ROOT)}))."
           "\n",
           "| regime | " + " | ".join(methods) + " | picture |",
           "|---|" + "---|" * (len(methods) + 1)]
    for r in s["regimes"]:
        cells = []
        for m in methods:
            st = r["methods"].get(m)
            if st is None:
                cells.append("")
            elif m == s.get("baseline", BASELINE):
                loss = st.get("final_heldout_loss")
                cells.append(f"held-out loss {loss:.4f} (baseline)" if loss is not None else cell(st))
            else:
                cells.append(cell(st))
        png = os.path.relpath(os.path.join(d, f"{r['name']}.png"), ROOT)
        out.append(f"| {regime_label(r)} | " + " | ".join(cells) + f" | [{r['name']}.png]({png}) |")
    out.append("")
    return out


def table():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*", "convergence", "summary.json"))):
        out += study_table(path)
    return "\n".join(out) if out else "No convergence study yet (bench/convergence/run.py).\n"


def main():
    cli(table, BEGIN, END, __doc__)


if __name__ == "__main__":
    main()
