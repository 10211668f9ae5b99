#!/usr/bin/python3
"""Builds the README's results table from the JSON files under bench/results/ (never by hand)."""
import argparse
import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(path):
    with open(path) as f:
        return json.load(f)


def rows_for(machine_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(machine_dir, "*.json"))):
        r = load(path)
        name = os.path.relpath(path, ROOT)
        kind = r.get("bench")
        if kind == "compress":
            rows.append((f"compress+decode, {r['elements']:,} fp32, {r['threads']} thread, {r['isa']}",
                         f"{r['seconds']['compress_decode']*1e3:.1f} ms",
                         f"memcpy {r['seconds']['memcpy']*1e3:.1f} ms",
                         f"{r['time_ratio']:.2f}x memcpy (bytes moved: {r['floor_time_ratio']:.2f}x)", name))
        elif kind == "allreduce":
            link = f", {r['network']['rate']} links" if r.get("network") else ""
            rows.append((f"allreduce, {r['workers']} ranks ({r['backend']}{link}), {r['elements']:,} fp32",
                         f"{r['seconds']['compressed']*1e3:.0f} ms, {r['bytes_per_rank']['compressed']/1e6:.2f} MB/rank",
                         f"fp32 {r['seconds']['fp32']*1e3:.0f} ms, {r['bytes_per_rank']['fp32']/1e6:.1f} MB/rank",
                         f"{r['byte_ratio']:.1f}x fewer bytes, {r['time_ratio']:.2f}x faster", name))
        elif kind == "step":
            rows.append((f"{r['optimizer']} step ({r['stage']}), {r['params']:,} params, {r['threads']} thread",
                         f"{r['seconds']['step']*1e3:.0f} ms",
                         f"memcpy {r['seconds']['memcpy']*1e3:.1f} ms",
                         f"{r['time_ratio']:.2f}x memcpy ({r['bytes_per_param']['step']:g} B/param, bytes moved: "
                         f"{r['floor_time_ratio']:.2f}x)", name))
        elif kind == "precision":
            st, md = r["settings"], r["median"]
            rows.append((f"`onebit train --precision bf16`: {st['model']} BERT, {st['workers']} worker, "
                         f"{st['steps']} steps x {st['batch']}",
                         f"bf16: {md['bf16']['samples_per_second']:.1f} samples/s, held-out loss "
                         f"{md['bf16']['heldout_loss']:.4f}",
                         f"fp32: {md['fp32']['samples_per_second']:.1f} samples/s, held-out loss "
                         f"{md['fp32']['heldout_loss']:.4f}",
                         f"{r['speedup']:.2f}x faster, loss ratio {r['heldout_loss_ratio']:.5f}", name))
        elif kind == "overlap":
            for rate, x in r["results"].items():
                on, off, ratio = x["on"], x["off"], x["ratios_on_over_off"]
                rows.append((f"`onebit compare --overlap on`: mini BERT, 4 workers (gloo, {rate} links), 60 steps x 8",
                             f"on: LAMB {on['lamb']['samples_per_second']:.1f}, 1-bit LAMB "
                             f"{on['onebit_lamb']['samples_per_second']:.1f} samples/s",
                             f"off: LAMB {off['lamb']['samples_per_second']:.1f}, 1-bit LAMB "
                             f"{off['onebit_lamb']['samples_per_second']:.1f} samples/s",
                             f"LAMB {ratio['lamb']['samples_per_second']:.2f}x, 1-bit LAMB "
                             f"{ratio['onebit_lamb']['samples_per_second']:.2f}x (medians of "
                             f"{len(on['lamb']['samples_per_second_runs'])})", name))
    for path in sorted(glob.glob(os.path.join(machine_dir, "*", "compare.json"))):
        r, name = load(path), os.path.relpath(path, ROOT)
        st, a, b = r["settings"], r["lamb"], r["onebit_lamb"]
        links = f", {st['network']['rate']} links" if isinstance(st.get("network"), dict) else ""
        rows.append((f"`onebit compare`: {st['model']} BERT, {st['workers']} workers ({st['backend']}{links}), "
                     f"{st['steps']} steps x {st['batch']}",
                     f"1-bit LAMB: held-out loss {b['heldout_loss']:.4f}, {b['bytes_sent']/1e6:.1f} MB/worker",
                     f"LAMB: held-out loss {a['heldout_loss']:.4f}, {a['bytes_sent']/1e6:.1f} MB/worker",
                     f"{r['ratios']['bytes_sent']:.2f}x fewer bytes, loss ratio {r['ratios']['heldout_loss']:.4f}",
                     name))
    return rows


def bar_text(t):
    """A step's bar: a fraction of the device's copy bandwidth (older files: a time on an H100)."""
    met = "met" if t.get("meets_bar") else "not met"
    if "bar_fraction_of_copy" in t:
        return f"{t['bar_fraction_of_copy']:g} of copy: {met}"
    return f"{t['bar_ms']} ms: {met}" if "bar_ms" in t else ""


def gpu_train_table(path):
    """One GPU's training file from bench/gpu/train_phase.sh: the step breakdown and the convergence run."""
    r = load(path)
    name = os.path.relpath(path, ROOT)
    src = f"[{os.path.basename(path)}]({name})"
    out = [f"Training on GPU `{r['device']}` (`onebit train`, bf16):\n",
           "| run | result | source |", "|---|---|---|"]
    for opt, b in r.get("step_breakdown", {}).items():
        if opt == "adamw_fused":
            out.append(f"| torch fused AdamW step, {b['parameters']:,} parameters | {b['ms_median']:.2f} ms | {src} |")
            continue
        st = b["settings"]
        peer = f"; optimizer {b['optimizer_over_adamw_fused']:.2f}x fused AdamW" if "optimizer_over_adamw_fused" in b else ""
        out.append(f"| {opt} step, {st['model']} BERT, {st['workers']} workers, micro-batch {st['micro_batch']} | "
                   f"{b['step_seconds'] * 1e3:.1f} ms: forward+backward {b['forward_backward_fraction']:.2f}, "
                   f"optimizer {b['optimizer_fraction']:.2f}, exchange {b['exchange_fraction']:.2f}{peer} | {src} |")
    c = r.get("convergence")
    if c:
        st = r.get("convergence_settings", {})
        out.append(f"| `onebit compare`: {st.get('model', '?')} BERT, {st.get('workers', '?')} workers, "
                   f"{st.get('steps', '?')} steps x {st.get('batch', '?')} | 1-bit LAMB's held-out loss {c['gap']:+.2%} "
                   f"against LAMB's, {c['byte_ratio']:.2f}x fewer bytes | {src} |")
    out.append("")
    return out


def gpu_table(path):
    """One GPU's file from bench/gpu/run.sh: each step against the device copy bandwidth."""
    r = load(path)
    name = os.path.relpath(path, ROOT)
    out = [f"GPU `{r['device']}` ({r['params']:,} parameters in {r['layers']} tensors, world size "
           f"{r['world_size']} over {r['backend']}; device copy {r['copy']['GBps']:.0f} GB/s in the same run):\n",
           "| step | time | bytes moved | fraction of copy bandwidth | bar | vs reference | source |",
           "|---|---|---|---|---|---|---|"]
    for key, t in r["results"].items():
        bar = bar_text(t)
        ref = f"{r['speedup_vs_reference'][key]:.1f}x faster" if key in r.get("speedup_vs_reference", {}) else ""
        out.append(f"| {key.replace('_', ' ')} | {t['ms_median']:.2f} ms | {t['bytes_per_param']:g} B/param | "
                   f"{t['fraction_of_copy']:.2f} | {bar} | {ref} | [{os.path.basename(path)}]({name}) |")
    out.append("")
    return out


def table():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*.json"))):
        if load(path).get("bench") == "gpu":
            out += gpu_table(path)
        elif path.endswith("-train.json"):
            out += gpu_train_table(path)
    for machine_dir in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "*"))):
        if not os.path.isdir(machine_dir):
            continue
        rows = rows_for(machine_dir)
        if not rows:
            continue
        first = load(sorted(glob.glob(os.path.join(machine_dir, "*.json")))[0])
        m = first.get("machine", {})
        out.append(f"Machine `{os.path.basename(machine_dir)}`: {m.get('cpu', '?')}, {m.get('cores', '?')} cores "
                   "(a row that ran on another CPU of the same class names it; bytes are the same on any CPU, "
                   "and so are LAMB's losses and the warmup's, but 1-bit LAMB's compression steps came out "
                   "a few ulps apart on an Intel Xeon and an AMD EPYC: see Status).\n")
        out.append("| benchmark | onebit | baseline, same run | ratio | source |")
        out.append("|---|---|---|---|---|")
        for row in rows:
            cpu = load(os.path.join(ROOT, row[4])).get("machine", {}).get("cpu")
            where = f" (on {cpu})" if cpu and cpu != m.get("cpu") else ""
            out.append("| " + row[0] + where + " | " + " | ".join(row[1:4]) +
                       f" | [{os.path.basename(row[4])}]({row[4]}) |")
        out.append("")
    return "\n".join(out)


def cli(table, begin=BEGIN, end=END, doc=__doc__):
    """Prints `table` (a function giving markdown), or with --write puts it between the markers."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--write", help="replace the table between the markers in this file")
    args = ap.parse_args()
    t = table()
    if not args.write:
        print(t)
        return
    path = os.path.join(ROOT, args.write) if not os.path.isabs(args.write) else args.write
    with open(path) as f:
        text = f.read()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} ... {end} markers; add them where the table goes")
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{t}\n{end}", text, flags=re.S)
    with open(path, "w") as f:
        f.write(text)


def main():
    cli(table)


if __name__ == "__main__":
    main()
