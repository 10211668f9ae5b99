"""What each rank does in the multi-process tests, and the deterministic inputs the tests share
with the single-process references."""
import os
import signal
import time
import warnings

import torch
import torch.distributed as dist

import onebit

SIZES = [37, 64, 5, 130, 1, 200]  # awkward layer sizes, not a multiple of 64 * P


def initial_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(SIZES), generator=g)


def gradients(world, steps, exact_steps, seed=1):
    """[world, steps, N]: rank p's local gradient at step s. The first exact_steps are multiples of
    1/64 in [-1, 1], whose fp32 sums are exact in any order, so a warmup allreduce over Gloo and over
    onebit's local backend give the same bits."""
    g = torch.Generator().manual_seed(seed)
    N = sum(SIZES)
    out = torch.randn(world, steps, N, generator=g)
    out[:, :exact_steps] = torch.randint(-64, 65, (world, exact_steps, N), generator=g).float() / 64
    return out


def make_params(flat):
    out, off = [], 0
    for n in SIZES:
        out.append(torch.nn.Parameter(flat[off:off + n].clone()))
        off += n
    return out


def cat(params):
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def set_grads(params, flat_grad):
    off = 0
    for p in params:
        p.grad = flat_grad[off:off + p.numel()].view_as(p).clone().to(p.dtype)
        off += p.numel()


def make_optimizer(kind, params, options):
    cls = {"lamb": onebit.Lamb, "onebit-lamb": onebit.OnebitLamb, "onebit-adam": onebit.OnebitAdam}[kind]
    return cls(params, **options)


def core_options(options):
    """The optimizer's keyword arguments in the core's names, for _onebit.reference_run."""
    out = dict(options)
    if "betas" in out:
        out["beta1"], out["beta2"] = out.pop("betas")
    return out


# --- scenarios: f(rank, world, outdir, **kwargs) -> a picklable result ---------------------------

def steps_vs_core(rank, world, outdir, kind, options, steps, exact_steps):
    """Steps on the shared inputs, the parameters after every step."""
    params = make_params(initial_params())
    opt = make_optimizer(kind, params, options)
    grads = gradients(world, steps, exact_steps)
    history = []
    for s in range(steps):
        set_grads(params, grads[rank, s])
        opt.step()
        history.append(cat(params).clone())
    return {"history": history, "stats": opt.comm.stats(), "backend": opt.comm.backend}


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def regression_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = torch.sin(x @ torch.linspace(-1, 1, 8).unsqueeze(1)) + 0.05 * torch.randn(n, 1, generator=g)
    return x, y


def warmup(rank, world, outdir, steps, batch):
    """OnebitLamb in warmup on this rank's shard of one global batch per step."""
    model = mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=steps + 100, weight_decay=0.01)
    history = []
    for s in range(steps):
        x, y = regression_data(batch, seed=100 + s)
        shard = slice(rank * batch // world, (rank + 1) * batch // world)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[shard]), y[shard]).backward()
        opt.step()
        history.append(cat(model.parameters()).clone())
    return {"history": history, "in_warmup": opt.in_warmup}


def overlap(rank, world, outdir, steps, overlap):
    """OnebitLamb (bf16 warmup exchange, frozen after step 3) on this rank's shard, two micro-batches
    a step (the first under no_sync), with or without the exchange overlapped with backward."""
    model = mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=3, weight_decay=0.01, warmup_exchange="bf16",
                            overlap=overlap, bucket_mb=0.0001)
    history, reports, grads = [], [], []
    for s in range(steps):
        x, y = regression_data(32, seed=100 + s)
        shard = [slice(rank * 32 // world + h * 16 // world, rank * 32 // world + (h + 1) * 16 // world) for h in (0, 1)]
        opt.zero_grad()
        with opt.no_sync():
            torch.nn.functional.mse_loss(model(x[shard[0]]), y[shard[0]]).backward()
        torch.nn.functional.mse_loss(model(x[shard[1]]), y[shard[1]]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone())
        opt.step()
        history.append(cat(model.parameters()).clone())
        reports.append(opt.last_overlap)
    return {"history": history, "reports": reports, "grads": grads}


def resume(rank, world, outdir, phase, options, first, second):
    """phase 'first': `first` steps, save model + optimizer state, then `second` more steps.
    phase 'second': a fresh model and optimizer load the saved state and run the `second` steps."""
    grads = gradients(world, first + second, exact_steps=first + second)
    path = os.path.join(outdir, "ckpt.rank%d.pt" % rank)
    if phase == "first":
        params = make_params(initial_params())
        opt = onebit.OnebitLamb(params, **options)
        for s in range(first):
            set_grads(params, grads[rank, s])
            opt.step()
        torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, path)
    else:
        params = make_params(initial_params(seed=7))  # other values: all must come from the file
        opt = onebit.OnebitLamb(params, **options)
        ckpt = torch.load(path)
        with torch.no_grad():
            for p, saved in zip(params, ckpt["params"]):
                p.copy_(saved)
        opt.load_state_dict(ckpt["opt"])
    history = []
    for s in range(first, first + second):
        set_grads(params, grads[rank, s])
        opt.step()
        history.append(cat(params).clone())
    return {"history": history, "in_warmup_at_stop": first < options["freeze_step"]}


def resize(rank, world, outdir, options, saved_world, steps):
    """Loads the checkpoint that `resume` phase 'first' wrote with saved_world ranks into this run of
    `world` ranks: refused by default, accepted with reset_errors_on_resize (and a warning)."""
    ckpt = torch.load(os.path.join(outdir, "ckpt.rank%d.pt" % (rank % saved_world)))
    params = make_params(initial_params(seed=7))
    opt = onebit.OnebitLamb(params, **options)
    with torch.no_grad():
        for p, saved in zip(params, ckpt["params"]):
            p.copy_(saved)
    try:
        opt.load_state_dict(ckpt["opt"])
        refused = None
    except ValueError as e:
        refused = str(e)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.load_state_dict(ckpt["opt"], reset_errors_on_resize=True)
    errors = opt.state_dict()["onebit"][0]["tensors"]
    grads = gradients(world, steps, exact_steps=steps)
    for s in range(steps):
        set_grads(params, grads[rank, s])
        opt.step()
    return {"refused": refused, "warnings": [str(w.message) for w in caught], "params": cat(params),
            "errors_zero": bool((errors["worker_error"] == 0).all() and (errors["server_error"] == 0).all()),
            "in_warmup": opt.in_warmup}


def train(rank, world, outdir, steps, freeze_step):
    """A small model trained with OnebitLamb on this rank's shard; held-out loss before and after."""
    model = mlp(seed=3)
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=freeze_step, weight_decay=0.001)
    x_test, y_test = regression_data(512, seed=9999)

    def held_out():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(x_test), y_test).item()

    before = held_out()
    for s in range(steps):
        x, y = regression_data(32, seed=world * 100000 + s * world + rank)  # disjoint local batches
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return {"before": before, "after": held_out(), "params": cat(model.parameters()),
            "bytes_sent": opt.comm.stats()["bytes_sent"], "in_warmup": opt.in_warmup}


def collectives(rank, world, outdir):
    """The c10d communicator's collectives on the default group."""
    comm = onebit._onebit.c10d_communicator(dist.distributed_c10d._get_default_group(), 30.0)
    x = torch.arange(10, dtype=torch.float32) * (rank + 1)
    comm.allreduce_sum(x)
    send = torch.tensor([16 * rank + j for j in range(world) for _ in range(3)], dtype=torch.uint8)
    recv = torch.zeros_like(send)
    comm.alltoall(send, recv)
    mine = torch.tensor([rank, 200 + rank], dtype=torch.uint8)
    gathered = torch.zeros(2 * world, dtype=torch.uint8)
    comm.allgather(mine, gathered)
    b = torch.full((5,), rank, dtype=torch.uint8)
    comm.broadcast(b, world - 1)
    comm.barrier()
    return {"sum": x, "alltoall": recv, "allgather": gathered, "broadcast": b, "stats": comm.stats(),
            "backend": comm.backend, "size": comm.size, "rank": comm.rank}


def timeout(rank, world, outdir):
    """Rank 1 never joins the collective: rank 0 must fail within its timeout, not hang."""
    if rank == 1:
        time.sleep(4)
        return {"group_broken": True}
    comm = onebit._onebit.c10d_communicator(dist.distributed_c10d._get_default_group(), 1.0)
    t0 = time.monotonic()
    try:
        comm.barrier()
        error = None
    except onebit.Error as e:
        error = str(e)
    after = None
    try:
        comm.barrier()
    except onebit.Error as e:
        after = str(e)
    return {"group_broken": True, "error": error, "seconds": time.monotonic() - t0, "after": after}


def killed_rank(rank, world, outdir, kind, options, kill_step):
    """The last rank is killed (SIGKILL) at kill_step, before its step: the others' step ends within
    the timeout with an error naming it (options carry watch=True: heartbeats in the job's store)."""
    params = make_params(initial_params())
    opt = make_optimizer(kind, params, options)
    grads = gradients(world, kill_step + 1, exact_steps=0)
    for s in range(kill_step + 1):
        if s == kill_step and rank == world - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        set_grads(params, grads[rank, s])
        t0 = time.monotonic()
        try:
            opt.step()
        except onebit.Error as e:
            return {"group_broken": True, "step": s, "error": str(e), "seconds": time.monotonic() - t0}
    return {"group_broken": True, "step": None, "error": None}


def nan_skip(rank, world, outdir, kind, options, bad_step):
    """Rank world-1's gradient holds a NaN at bad_step: every rank skips that step together."""
    params = make_params(initial_params())
    opt = make_optimizer(kind, params, options)
    grads = gradients(world, bad_step + 2, exact_steps=bad_step + 2)
    history, skipped = [], []
    for s in range(bad_step + 2):
        g = grads[rank, s].clone()
        if s == bad_step and rank == world - 1:
            g[3] = float("nan")
        set_grads(params, g)
        opt.step()
        history.append(cat(params).clone())
        skipped.append(opt.last_step_skipped)
    return {"history": history, "skipped": skipped, "skipped_steps": opt.skipped_steps}
