"""The example under torchrun (env:// rendezvous, 4 processes), and a process that exits while its
optimizer and its process group are still alive (the exit must not hang)."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "train_onebit_lamb.py")


def torchrun(*args):
    """torchrun as a module of this interpreter. Debian 12's torch 1.13 on Python 3.11 cannot parse the
    default --redirects/--tee "0" (an IntFlag change in 3.11); 2 (stderr) parses everywhere."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--redirects", "2", "--tee", "2", *args]


def test_the_example_trains_under_torchrun_with_4_processes(tmp_path):
    cmd = torchrun("--nproc_per_node", "4", EXAMPLE, "--steps", "60")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if "held-out loss" in line]
    assert len(lines) == 1 and " on 4 ranks " in lines[0], out.stdout
    start, end = (float(v) for v in lines[0].split("held-out loss ")[1].split(" on ")[0].split(" -> "))
    assert end < 0.5 * start, lines[0]


EXIT_WITH_EVERYTHING_ALIVE = """
import datetime, torch, torch.distributed as dist, onebit
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
model = torch.nn.Linear(8, 1)
opt = onebit.OnebitLamb(model.parameters(), lr=0.01, freeze_step=1, watch=True)
for _ in range(3):
    opt.zero_grad()
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
print("rank %d done" % dist.get_rank(), flush=True)
# no destroy_process_group, the optimizer alive: the interpreter's exit drops them
"""


def test_ranks_exit_with_the_optimizer_and_process_group_still_alive(tmp_path):
    script = tmp_path / "exit_alive.py"
    script.write_text(EXIT_WITH_EVERYTHING_ALIVE)
    out = subprocess.run(torchrun("--nproc_per_node", "2", str(script)), capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rank 0 done" in out.stdout and "rank 1 done" in out.stdout
