#!/usr/bin/python3
"""Convergence study: every method (optimizer set-up) in every regime (training set-up) and seed,
against LAMB in the same regime and seed.

Each run is `build/onebit train` (BERT masked LM) or bench/convergence/causal_lm.py under torchrun
(causal LM); both write metrics.jsonl and summary.json in their run directory. For each method the
study keeps the final held-out loss and the whole-run bytes sent per worker, and reports the loss
gap to LAMB (final / LAMB's final - 1, same seed) and LAMB's bytes / the method's bytes.

Writes into --out: <regime>.json and <regime>.png per regime, summary.json and summary.png (the
statistics and pictures are report.py's, next to this file).
Raw runs live in --runs-dir/<regime>/<method>/seed<K>; a finished run with the same settings is
not run again (--force reruns it). Regimes and methods are the data just below: edit them there.
"""
import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # report.py, next to this file
from report import plot_regime, plot_summary, stats, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Each kind's corpus when a regime gives no "data" (the trainers' own defaults; checked before running).
DEFAULT_DATA = {"bert": ["/usr/share/doc/python3.11/html/_sources"], "causal": ["/usr/share/games/fortunes"]}
CAUSAL_SCRIPT = os.path.join(ROOT, "bench", "convergence", "causal_lm.py")
TORCHRUN = ["/usr/bin/python3", "-m", "torch.distributed.run", "--redirects", "2", "--tee", "2"]
PAPER_FREEZE_FRACTION = 0.16  # "{paper_freeze}" in a method's args: round(0.16 * steps), at least 1
RUN_TIMEOUT = 15 * 60         # seconds per run unless a regime sets "timeout"
BASELINE = "lamb"             # every gap and byte ratio is against this method, same regime and seed

# Keys: name, kind ("bert" | "causal"), workers, steps, batch; optional: micro_batch, seq, lr,
# model (bert), data (corpus paths, passed as --data; causal: one), args (extra flags for every
# method), timeout (seconds per run), quick (part of --quick).
# Sized so the whole study (4 regimes x 5 methods x 3 seeds) runs in under an hour on 2 cores.
REGIMES = [
    # Short (under 200 steps), small batch, 4 workers: where the paper's fraction hurts most.
    dict(name="bert-tiny-b64-w4", kind="bert", model="tiny", workers=4, steps=120, batch=64, seq=32, quick=True),
    # Large global batch through accumulation (the paper's regime: few, large steps), 2 workers.
    dict(name="bert-tiny-b1024-w2", kind="bert", model="tiny", workers=2, steps=20, batch=1024, micro_batch=256,
         seq=16),
    dict(name="bert-mini-b32-w2", kind="bert", model="mini", workers=2, steps=40, batch=32, seq=32),
    # A causal LM on another corpus, through the PyTorch module under torchrun.
    dict(name="causal-fortunes-w4", kind="causal", workers=4, steps=60, batch=64, seq=64, quick=True),
]

# The flags a method adds: "args" for both kinds, or "bert" (`onebit train`'s flags) / "causal"
# (causal_lm.py's, e.g. "--opt", "KEY=VALUE") for one kind; a kind's key set to None: not run in that
# kind's regimes. The new default method is keyed exactly "default".
METHODS = [
    dict(name="lamb", args=["--optimizer", "lamb"]),
    # The paper: a fixed freeze at 16% of the steps, its compression stage, an fp32 warmup.
    dict(name="paper", bert=["--optimizer", "onebit-lamb", "--freeze-step", "{paper_freeze}", "--warmup-exchange", "fp32"],
         causal=["--optimizer", "onebit-lamb", "--freeze-step", "{paper_freeze}"]),
    # The automatic freeze alone, with the paper's compression stage.
    dict(name="auto", bert=["--optimizer", "onebit-lamb", "--freeze-step", "auto", "--refresh-interval", "0",
                            "--track-scales", "0", "--scale-group", "0", "--warmup-exchange", "fp32"],
         causal=["--optimizer", "onebit-lamb", "--freeze-step", "auto", "--opt", "refresh_interval=0",
                 "--opt", "track_scales=0", "--opt", "scale_group=0"]),
    # The new default below with an fp32 warmup exchange.
    dict(name="fp32-warmup", bert=["--optimizer", "onebit-lamb", "--warmup-exchange", "fp32"],
         causal=["--optimizer", "onebit-lamb"]),
    # The new default: the same with a bf16 warmup exchange (docs/algorithm.md §11), whose byte budget
    # buys the automatic freeze twice the steps (its ceiling: 40% of the steps instead of 20%), and a
    # compression scale per group of 2048 values (§12).
    # The new default with one compression scale per worker and per chunk (the paper's): what the scale
    # groups of docs/algorithm.md §12 add.
    dict(name="one-scale", bert=["--optimizer", "onebit-lamb", "--scale-group", "0"],
         causal=["--optimizer", "onebit-lamb", "--opt", "warmup_exchange=bf16", "--opt", "scale_group=0"]),
    dict(name="default", bert=["--optimizer", "onebit-lamb"],
         causal=["--optimizer", "onebit-lamb", "--opt", "warmup_exchange=bf16"]),
    dict(name="onebit-adam", bert=["--optimizer", "onebit-adam", "--warmup-exchange", "fp32"],
         causal=["--optimizer", "onebit-adam"]),
    # LAMB itself with the bf16 exchange: what the rounding alone costs.
    dict(name="lamb-bf16", bert=["--optimizer", "lamb", "--warmup-exchange", "bf16"],
         causal=["--optimizer", "lamb", "--opt", "warmup_exchange=bf16"]),
]

_lock = threading.Lock()
_live = set()        # Popen objects of runs in progress (killed on Ctrl-C)
_ports = set()       # ports handed to torchrun by this study


def colors():
    """The same color for a method in every picture (its place in METHODS)."""
    names = [m["name"] for m in METHODS]
    return {name: f"C{names.index(name) % 10}" for name in names}


def show(path):
    """A path as printed and recorded: relative to the repository when inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def fail(msg):
    print(f"run.py: {msg}", file=sys.stderr)
    sys.exit(2)


def default_machine():
    return os.environ.get("ONEBIT_MACHINE") or f"cpu-{len(os.sched_getaffinity(0))}core"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the regimes marked quick, one seed (the first)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--regimes", nargs="+", help="regime names (default: all)")
    ap.add_argument("--methods", nargs="+", help=f"method names (default: all; {BASELINE} is always added)")
    ap.add_argument("--out", help="results (default: bench/results/$ONEBIT_MACHINE or cpu-<n>core/convergence)")
    ap.add_argument("--runs-dir", default=os.path.join(ROOT, "out", "convergence"), help="raw run directories")
    ap.add_argument("--onebit", default=os.path.join(ROOT, "build", "onebit"))
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (default 1: one after the other)")
    ap.add_argument("--timeout", type=float, help=f"seconds per run (default: the regime's, else {RUN_TIMEOUT})")
    ap.add_argument("--force", action="store_true", help="rerun runs that are already done")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run and write nothing")
    ap.add_argument("--replot", action="store_true", help="run nothing: rebuild the outputs from the run directories")
    a = ap.parse_args()
    a.machine = default_machine()
    a.out = os.path.abspath(a.out or os.path.join(ROOT, "bench", "results", a.machine, "convergence"))
    a.runs_dir, a.onebit = os.path.abspath(a.runs_dir), os.path.abspath(a.onebit)
    if a.quick:
        a.seeds = a.seeds[:1]
    if a.jobs < 1 or len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
        fail("--jobs must be >= 1 and --seeds distinct non-negative integers")
    return a


def select(a):
    """The regimes and methods asked for; unknown names and malformed entries are errors."""
    by_regime, by_method = {r["name"]: r for r in REGIMES}, {m["name"]: m for m in METHODS}
    for r in REGIMES:
        missing = {"name", "kind", "workers", "steps", "batch"} - r.keys()
        if missing or r["kind"] not in DEFAULT_DATA or r["batch"] % r["workers"] or \
                (r["kind"] == "causal" and len(r.get("data", [])) > 1):
            fail(f"regime {r.get('name')}: needs {sorted(missing)}, kind bert|causal, batch a multiple of "
                 "workers, at most one data path (causal)")
    unknown = [n for n in a.regimes or [] if n not in by_regime] + [n for n in a.methods or [] if n not in by_method]
    if unknown:
        fail(f"unknown regime/method {', '.join(unknown)} (regimes: {', '.join(by_regime)}; "
             f"methods: {', '.join(by_method)})")
    if a.regimes:
        regimes = [by_regime[n] for n in a.regimes]
    else:
        regimes = [r for r in REGIMES if r.get("quick") or not a.quick]
    names = a.methods or list(by_method)
    methods = [by_method[BASELINE]] + [by_method[n] for n in names if n != BASELINE]
    if not regimes:
        fail("no regime selected (--quick: no regime has quick=True)")
    return regimes, methods


def problems(regimes):
    """What a real run would stop on: a missing binary, script, interpreter module or corpus."""
    out, a = [], ARGS
    kinds = {r["kind"] for r in regimes}
    if "bert" in kinds and not os.access(a.onebit, os.X_OK):
        out.append(f"{a.onebit} is missing or not executable (build it first: cmake --build build)")
    if "causal" in kinds and not os.path.isfile(CAUSAL_SCRIPT):
        out.append(f"{CAUSAL_SCRIPT} is missing")
    if "causal" in kinds and importlib.util.find_spec("torch") is None:
        out.append(f"{sys.executable} cannot import torch (needed by torchrun)")
    for r in regimes:
        out += [f"regime {r['name']}: corpus {p} is missing"
                for p in r.get("data", DEFAULT_DATA[r["kind"]]) if not os.path.exists(p)]
    return out


def applies(method, regime):
    return method.get(regime["kind"], method.get("args")) is not None


def method_args(method, regime):
    freeze = str(max(1, round(PAPER_FREEZE_FRACTION * regime["steps"])))
    return [str(s).replace("{paper_freeze}", freeze) for s in method.get(regime["kind"], method.get("args"))]


def settings(regime):
    return {k: v for k, v in regime.items() if k not in ("name", "quick", "timeout")}


def spec(regime, method, seed):
    """What makes two runs the same run (stored in run.json; compared to resume)."""
    return {"regime": settings(regime), "method": method["name"], "args": method_args(method, regime), "seed": seed}


def run_dir(regime, method, seed):
    return os.path.join(ARGS.runs_dir, regime["name"], method["name"], f"seed{seed}")


def free_port():
    with _lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports:
                _ports.add(port)
                return port


def command(regime, method, seed, d):
    r, extra = regime, [str(x) for x in regime.get("args", [])]
    opt = lambda flag, key: [flag, str(r[key])] if r.get(key) else []  # noqa: E731
    common = ["--steps", str(r["steps"]), "--batch", str(r["batch"])] + opt("--micro-batch", "micro_batch") + \
        opt("--seq", "seq") + opt("--lr", "lr") + [x for p in r.get("data", []) for x in ("--data", p)] + \
        ["--seed", str(seed), "--out", d]
    if r["kind"] == "bert":
        return [ARGS.onebit, "train", "--workers", str(r["workers"]), "--model", r.get("model", "tiny")] + \
            common + ["--no-progress"] + extra + method_args(method, r)
    port = free_port() if not ARGS.dry_run else 29500
    return TORCHRUN + ["--nproc_per_node", str(r["workers"]), "--master_port", str(port), CAUSAL_SCRIPT] + \
        common + extra + method_args(method, r)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_done(d, sp):
    meta = read_json(os.path.join(d, "run.json"))
    return bool(meta and meta.get("spec") == sp and meta.get("ok") and read_json(os.path.join(d, "summary.json")))


def run_one(job):
    """Runs one job in a fresh directory; run.json records the spec, the command and the outcome."""
    regime, method, seed, sp = job
    d = run_dir(regime, method, seed)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    cmd, log = command(regime, method, seed, d), os.path.join(d, "run.log")
    meta = {"spec": sp, "command": cmd, "started": datetime.datetime.now().isoformat(timespec="seconds")}
    write_json(os.path.join(d, "run.json"), meta)
    timeout = ARGS.timeout or regime.get("timeout", RUN_TIMEOUT)
    t0, reason = time.monotonic(), None
    with open(log, "w") as f:
        # The causal LM imports onebit: this build's module, not one installed earlier with pip.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.join(os.path.dirname(ARGS.onebit), "python")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True, env=env)
        with _lock:
            _live.add(p)
        try:
            code = p.wait(timeout=timeout)
            if code:
                reason = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        except subprocess.TimeoutExpired:
            kill(p)
            reason = f"timed out after {timeout:.0f} s"
        finally:
            with _lock:
                _live.discard(p)
    summary = read_json(os.path.join(d, "summary.json"))
    if not reason and not (summary and summary.get("final_heldout_loss") is not None):
        reason = "no summary.json with a final held-out loss"
    meta.update(ok=reason is None, reason=reason, seconds=round(time.monotonic() - t0, 1))
    if reason:
        with open(log, errors="replace") as f:
            meta["log_tail"] = "".join(f.readlines()[-30:])
        with _lock:
            print(f"FAILED {regime['name']}/{method['name']}/seed{seed}: {reason}\n  command: {shlex.join(cmd)}\n"
                  f"  log ({log}), last lines:\n" + "".join("    " + x for x in meta["log_tail"].splitlines(True)),
                  file=sys.stderr, flush=True)
    write_json(os.path.join(d, "run.json"), meta)
    return meta


def kill(p):
    """Ends the process group this study started for one run (the run's workers included)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=wait)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def load_run(regime, method, seed):
    """One seed's record for <regime>.json: the results, or why there are none."""
    d = run_dir(regime, method, seed)
    rec = {"seed": seed, "run_dir": show(d)}
    meta, summary = read_json(os.path.join(d, "run.json")), read_json(os.path.join(d, "summary.json"))
    if meta and meta.get("spec") != spec(regime, method, seed):
        return dict(rec, status="stale", reason="run.json: made with other settings (rerun the study)")
    if meta and meta.get("ok") is False:
        return dict(rec, status="failed", reason=meta.get("reason"), command=shlex.join(meta.get("command", [])),
                    log_tail=meta.get("log_tail", ""))
    if not summary:
        return dict(rec, status="missing", reason="no summary.json")
    if summary.get("final_heldout_loss") is None:
        return dict(rec, status="failed", reason="summary.json has no final held-out loss (diverged?)")
    options = summary.get("options", {})  # causal_lm.py: optimizer and freeze_step also on top
    optimizer = summary.get("optimizer", options.get("optimizer"))
    freeze = summary.get("freeze_step", options.get("freeze_step"))
    curve = []
    with open(os.path.join(d, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line) if line.strip() else {}
            if r.get("heldout_loss") is not None:
                curve.append([r["samples"], r["heldout_loss"]])
    return dict(rec, status="ok", final_heldout_loss=summary["final_heldout_loss"],
                bytes_sent=summary.get("bytes_sent"), freeze_step=None if optimizer == "lamb" else freeze,
                wall_seconds=summary.get("wall_seconds"), samples=summary.get("samples"), curve=curve)


def report(regime, methods, seeds):
    runs = {m["name"]: [load_run(regime, m, s) for s in seeds] for m in methods if applies(m, regime)}
    base = {r["seed"]: r for r in runs.get(BASELINE, []) if r["status"] == "ok"}
    return {"name": regime["name"], "settings": settings(regime), "seeds": seeds, "quick": ARGS.quick,
            "runs": runs, "methods": {m: stats(rs, base) for m, rs in runs.items()}}


def write_outputs(regimes, methods, seeds):
    os.makedirs(ARGS.out, exist_ok=True)
    summary = {"machine": ARGS.machine, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "seeds": seeds, "quick": ARGS.quick, "baseline": BASELINE, "regimes": []}
    for regime in regimes:
        rep = report(regime, methods, seeds)
        write_json(os.path.join(ARGS.out, f"{regime['name']}.json"), rep)
        plot_regime(rep, os.path.join(ARGS.out, f"{regime['name']}.png"), colors(), BASELINE)
        summary["regimes"].append({k: rep[k] for k in ("name", "settings", "methods")})
    write_json(os.path.join(ARGS.out, "summary.json"), summary)
    plot_summary(summary, os.path.join(ARGS.out, "summary.png"), colors(), BASELINE)
    return summary


def main():
    regimes, methods = select(ARGS)
    seeds = ARGS.seeds
    jobs = [(r, m, s, spec(r, m, s)) for r in regimes for m in methods if applies(m, r) for s in seeds]
    if ARGS.replot and not any(os.path.isdir(run_dir(*j[:3])) for j in jobs):
        fail(f"--replot: no run directory of the selected runs under {show(ARGS.runs_dir)}; nothing written")
    if not ARGS.replot:
        issues = problems(regimes)
        if issues and not ARGS.dry_run:
            fail("cannot start:\n  " + "\n  ".join(issues))
        todo = [j for j in jobs if ARGS.force or not is_done(run_dir(*j[:3]), j[3])]
        print(f"{len(jobs)} runs ({len(regimes)} regimes x {len(methods)} methods x {len(seeds)} seeds"
              f"{', quick' if ARGS.quick else ''}), {len(jobs) - len(todo)} already done", flush=True)
        if ARGS.dry_run:
            for j in jobs:
                done = "" if j in todo else "# done, skipped: "
                print(done + shlex.join(command(j[0], j[1], j[2], run_dir(*j[:3]))))
            for p in issues:
                print(f"warning (a real run stops here): {p}")
            return 0
        pool = concurrent.futures.ThreadPoolExecutor(ARGS.jobs)
        try:
            futures = {pool.submit(run_one, j): j for j in todo}
            for k, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                r, m, s, _ = futures[fut]
                meta = fut.result()
                print(f"[{k}/{len(todo)}] {r['name']}/{m['name']}/seed{s}: "
                      f"{'ok' if meta['ok'] else 'FAILED'} in {meta['seconds']:.0f} s", flush=True)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            with _lock:
                for p in list(_live):
                    kill(p)
    summary = write_outputs(regimes, methods, seeds)
    bad = [f"{r['name']}/{m}/seed{s}: {st}" for r in summary["regimes"] for m, v in r["methods"].items()
           for s, st in v["not_ok"].items()]
    print(f"wrote {show(ARGS.out)}/: summary.json, summary.png, and per regime <regime>.json/.png")
    for r in summary["regimes"]:
        for m, v in r["methods"].items():
            if v["gap"] is not None:
                print(f"  {r['name']:24} {m:14} held-out {v['final_heldout_loss']:.4f}  gap {v['gap'] * 100:+6.2f}% "
                      f"({v['spread'][0] * 100:+.2f}..{v['spread'][1] * 100:+.2f})  "
                      f"{v['byte_ratio'] or 0:5.2f}x fewer bytes  ({v['seeds']} seeds)")
    if bad:
        print("runs without a result (recorded in the summary):\n  " + "\n  ".join(bad), file=sys.stderr)
    return 1 if bad else 0


def interrupted(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    ARGS = parse_args()
    signal.signal(signal.SIGTERM, interrupted)  # like Ctrl-C: the runs in progress are ended too
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("run.py: interrupted; finished runs are kept and skipped next time", file=sys.stderr)
        sys.exit(130)
