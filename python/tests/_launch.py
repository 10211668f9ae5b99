"""Runs a scenario of _scenarios.py on real processes joined by torch.distributed (Gloo on 127.0.0.1),
every wait bounded, and returns what each rank saved."""
import json
import os
import socket
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_worker.py")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(scenario, world, outdir, timeout=240, killed=(), **kwargs):
    """Starts `world` worker processes running scenario(rank, world, outdir, **kwargs) and returns
    the list of their results (rank order). Any failure or a timeout kills them all and fails; the
    ranks in `killed` must die of SIGKILL instead, and their result is None."""
    port = free_port()
    outdir = str(outdir)
    logs = [os.path.join(outdir, "%s.rank%d.log" % (scenario, r)) for r in range(world)]
    procs = []
    for rank in range(world):
        with open(logs[rank], "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, scenario, str(rank), str(world), str(port), outdir, json.dumps(kwargs)],
                stdout=log, stderr=subprocess.STDOUT, cwd=HERE))
    deadline = time.monotonic() + timeout
    failed = None
    try:
        for rank, p in enumerate(procs):
            try:
                expected = -9 if rank in killed else 0
                if p.wait(timeout=max(0.1, deadline - time.monotonic())) != expected and failed is None:
                    failed = "rank %d exited with %d, not %d" % (rank, p.returncode, expected)
            except subprocess.TimeoutExpired:
                failed = "timed out after %d s" % timeout
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if failed:
        text = "\n".join("--- rank %d ---\n%s" % (r, open(logs[r]).read()[-4000:]) for r in range(world))
        raise AssertionError("%s %s: %s\n%s" % (scenario, kwargs, failed, text))
    return [None if r in killed else torch.load(os.path.join(outdir, "%s.rank%d.pt" % (scenario, r)))
            for r in range(world)]
