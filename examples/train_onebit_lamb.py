"""Trains a small torch model with onebit.OnebitLamb on several processes over Gloo: each rank computes
the gradient of its own batch, the optimizer does the rest.

Under torchrun (env:// rendezvous: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), one process per rank:

    torchrun --standalone --nproc_per_node 4 examples/train_onebit_lamb.py --steps 200

(Debian 12's torch 1.13 on Python 3.11 needs `--redirects 2 --tee 2` after torchrun: it cannot parse
their default "0".) Run by itself, it starts --world-size processes with torch.multiprocessing:

    python3 examples/train_onebit_lamb.py --world-size 4 --steps 200
"""
import argparse
import datetime
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import onebit


def data(n, seed):
    """n samples of a fixed random 'teacher' network the model learns to imitate."""
    x = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    teacher = torch.Generator().manual_seed(7)
    w1, w2 = torch.randn(16, 32, generator=teacher) / 4, torch.randn(32, 1, generator=teacher) / 3
    return x, torch.tanh(x @ w1) @ w2


def worker(rank, world, port, args):
    torch.set_num_threads(1)
    if port is None:  # torchrun: the rendezvous is in the environment (env://)
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    else:
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
    torch.manual_seed(0)  # the same initial model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 1))
    # Build the optimizer last: the parameters move into its flat buffer. No DDP wrapper: step()
    # averages (warmup) or compresses (after freeze_step) the momentum over the default group.
    opt = onebit.OnebitLamb(model.parameters(), lr=args.lr, freeze_step=max(1, args.steps // 5),
                            weight_decay=0.01)
    x_test, y_test = data(1024, seed=12345)
    loss_fn = torch.nn.functional.mse_loss
    with torch.no_grad():
        start = loss_fn(model(x_test), y_test).item()
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y = data(args.batch, seed=step * world + rank)  # this rank's own batch
        stage = "warmup" if opt.in_warmup else "compressed"
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        if rank == 0 and (step + 1) % max(1, args.steps // 5) == 0:
            with torch.no_grad():
                print("step %4d  %-11s local loss %.4f" % (step + 1, stage, loss_fn(model(x), y).item()), flush=True)
    with torch.no_grad():
        end = loss_fn(model(x_test), y_test).item()
    if rank == 0:
        stats = opt.comm.stats()
        print("held-out loss %.4f -> %.4f on %d ranks in %.1f s; rank 0 sent %.1f KiB in %d collectives"
              % (start, end, world, time.perf_counter() - t0, stats["bytes_sent"] / 1024, stats["calls"]))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=4, help="processes to start (not under torchrun)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=600, help="seconds before the run is abandoned")
    args = parser.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun: this is one rank
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None, args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.spawn(worker, args=(args.world_size, port, args), nprocs=args.world_size, join=False)
    deadline = time.monotonic() + args.timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            raise SystemExit("the workers did not finish within %.0f s" % args.timeout)


if __name__ == "__main__":
    main()
