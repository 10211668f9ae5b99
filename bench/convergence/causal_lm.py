"""Convergence-study worker: a small causal (GPT-style) byte-level language model trained on the
Debian `fortunes` corpus with onebit.Lamb, onebit.OnebitLamb or onebit.OnebitAdam over
torch.distributed Gloo, one process per rank under torchrun. It writes metrics.jsonl and
summary.json in the format of `onebit train`, so a study driver can treat both trainers alike.

    PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])')
    /usr/bin/python3 -m torch.distributed.run --redirects 2 --tee 2 --nproc_per_node 4 \
        --master_addr 127.0.0.1 --master_port $PORT bench/convergence/causal_lm.py \
        --optimizer onebit-lamb --freeze-step 30 --steps 160 --out runs/onebit-lamb

(Debian's /usr/bin/python3 with torch and onebit; its torchrun needs --redirects/--tee given
explicitly under Python 3.11. --standalone always takes port 29400, so concurrent runs collide.)

The recipe is that of a typical user: two parameter groups (weight decay on the weight matrices,
none on biases, LayerNorms and embeddings), a bf16 autocast forward, linear lr warmup over 10% of
the steps then linear decay (the lr of `onebit train`), each rank's own gradient clipped to 1.0
before step(), no DDP (the optimizers average or compress the gradients themselves).
Model: 2 layers, width 96, 4 heads, MLP 4x, learned positions, pre-LayerNorm, vocab 256 (bytes).
The output head is UNTIED from the token embedding: every parameter is one tensor of its own,
so the layer-wise trust ratios of (1-bit) LAMB see the embedding and the head apart.
Data: fortune entries are documents; 5% of them (by a hash of their text, whatever the seed) are
held out. The rest form one byte stream cut into sequences of seq+1 bytes, visited in a
seed-dependent order, each rank taking its own disjoint share of every global batch. The held-out
loss is the mean per-token cross entropy (the training's bf16 autocast forward, the loss in fp32)
over a fixed, seed-independent set of held-out sequences, sharded over the ranks and summed.
bytes_sent counts the optimizer's traffic only (its communicator, reset after set-up); the few
bytes of loss reports and checks go over torch.distributed directly and are not counted.
"""
import argparse
import datetime
import gc
import hashlib
import json
import math
import os
import re
import sys
import time
import types

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

OPTIMIZERS = {"lamb": "Lamb", "onebit-lamb": "OnebitLamb", "onebit-adam": "OnebitAdam"}


def value(text):
    """--opt's value: an int, a float, a JSON object or list (e.g. auto_freeze={"min_steps": 5}), else a string."""
    for kind in (int, float, json.loads):
        try:
            result = kind(text)
            if kind is not json.loads or isinstance(result, (dict, list)):
                return result
        except ValueError:
            pass
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="onebit-lamb")
    p.add_argument("--freeze-step", default=None,
                   help="an integer or 'auto'; omitted: not passed, so the optimizer's own default applies")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword argument for the optimizer (int, float or str); repeatable")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch", type=int, default=128, help="global sequences per step")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="sequences per forward/backward on a rank (gradients accumulate); 0: the whole local batch")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=0.01, help="on the weight matrices only")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--eval-every", type=int, default=0, help="0: steps/20")
    p.add_argument("--eval-samples", type=int, default=256, help="held-out sequences evaluated")
    p.add_argument("--data", default="/usr/share/games/fortunes")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds any collective may take")
    a = p.parse_args(argv)
    if a.freeze_step is not None and a.freeze_step != "auto":
        a.freeze_step = int(a.freeze_step)
    opts = {}
    for item in a.opt:
        key, sep, text = item.partition("=")
        if not sep or not key:
            p.error("--opt takes KEY=VALUE, not %r" % item)
        opts[key] = value(text)
    a.opt = opts
    a.eval_every = a.eval_every or max(1, a.steps // 20)
    return a


def load_corpus(data_dir):
    """(train, heldout) byte streams of the fortune files (entries split on lines holding only "%").
    Skips the .dat indexes, symlinks (the .u8 aliases) and subdirectories."""
    files = []
    if os.path.isdir(data_dir):
        files = sorted(f for f in os.listdir(data_dir) if not f.endswith(".dat")
                       and os.path.isfile(os.path.join(data_dir, f))
                       and not os.path.islink(os.path.join(data_dir, f)))
    if not files:
        sys.exit("causal_lm.py: no fortune files in %s: install the corpus with `apt-get install fortunes` "
                 "(Debian package fortunes) or pass --data DIR" % data_dir)
    train, held = [], []
    for name in files:
        with open(os.path.join(data_dir, name), "rb") as f:
            for doc in re.split(rb"(?m)^%\r?$", f.read()):
                doc = doc.strip()
                if doc:
                    heldout = int.from_bytes(hashlib.sha1(doc).digest()[:4], "little") % 100 < 5
                    (held if heldout else train).append(doc + b"\n%\n")
    stream = lambda docs: torch.from_numpy(np.frombuffer(b"".join(docs), dtype=np.uint8).astype(np.int64))
    return stream(train), stream(held), len(train), len(held)


def cut(stream, seq):
    """The stream as rows of seq+1 bytes (input and shifted target), consecutive rows sharing one."""
    return stream.unfold(0, seq + 1, seq)


class Block(nn.Module):
    def __init__(self, d, heads, seq):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.register_buffer("mask", torch.full((seq, seq), float("-inf")).triu(1), persistent=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) * (d // self.heads) ** -0.5 + self.mask[:t, :t]
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CausalLM(nn.Module):
    def __init__(self, vocab=256, d=96, layers=2, heads=4, seq=128):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads, seq) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        for name, p in self.named_parameters():  # GPT-2 style
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def param_groups(model, weight_decay):
    """Weight decay on the weight matrices (the head's included), none on embeddings, biases, LayerNorms."""
    decay = {n for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("tok.", "pos."))}
    return [{"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": weight_decay},
            {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0}]


def lr_factor(step, warmup, steps):
    """lr / peak at 1-based step: `onebit train`'s lr_at (linear warmup, then linear decay to 0)."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    return (steps - step + 1) / (steps - warmup)


def evaluate(model, heldout, rank, world):
    """Mean per-token cross entropy over the held-out rows, each rank taking every world-th row."""
    total = torch.zeros(2, dtype=torch.float64)
    rows = heldout[rank::world]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for chunk in rows.split(64):
            logits = model(chunk[:, :-1]).float()
            total[0] += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
            total[1] += chunk[:, 1:].numel()
    dist.all_reduce(total)
    return (total[0] / total[1]).item()


def check_identical(model, world, when):
    """Fails on every rank unless all ranks' parameters are bitwise identical."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    digests = [None] * world
    dist.all_gather_object(digests, hashlib.sha256(flat.numpy().tobytes()).hexdigest())
    if len(set(digests)) != 1:
        raise RuntimeError("causal_lm.py: the ranks' parameters differ %s: %s" % (when, digests))


class Batches:
    """This rank's rows of each step's global batch: the training rows in a seed-dependent order per
    epoch, each rank taking its own disjoint share."""

    def __init__(self, train, args, rank, local_batch):
        self.train, self.batch, self.seed = train, args.batch, args.seed
        self.rank, self.local_batch = rank, local_batch
        self.order = {}  # epoch -> permutation of the training rows (seed-dependent)

    def rows(self, step):
        first = (step - 1) * self.batch + self.rank * self.local_batch
        idx = []
        for g in range(first, first + self.local_batch):
            epoch, i = divmod(g, self.train.shape[0])
            if epoch not in self.order:
                self.order[epoch] = torch.randperm(self.train.shape[0], generator=torch.Generator().manual_seed(
                    self.seed * 1_000_003 + epoch))
            idx.append(self.order[epoch][i])
        return self.train[torch.stack(idx)]


def setup(args):
    """The corpus, the process group, this rank's share of a batch and the held-out rows: the run's
    state, to which main() adds the model, the optimizer and the batches."""
    train_stream, held_stream, n_train_docs, n_held_docs = load_corpus(args.data)  # before any group work
    import onebit  # noqa: F401  (imported before the process group; build_optimizer() uses it)

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    threads = max(1, len(os.sched_getaffinity(0)) // local_world)
    torch.set_num_threads(threads)
    if args.batch % world:
        sys.exit("causal_lm.py: --batch %d is not divisible by the %d ranks" % (args.batch, world))
    local_batch = args.batch // world

    train = cut(train_stream, args.seq)
    held_all = cut(held_stream, args.seq)
    n_eval = min(args.eval_samples, held_all.shape[0])
    heldout = held_all[torch.from_numpy(np.linspace(0, held_all.shape[0] - 1, n_eval).round().astype(np.int64))]
    corpus = {"data": args.data, "train_documents": n_train_docs, "heldout_documents": n_held_docs,
              "train_sequences": train.shape[0], "heldout_sequences": held_all.shape[0]}
    return types.SimpleNamespace(rank=rank, world=world, threads=threads, local_batch=local_batch,
                                 micro=args.micro_batch or local_batch, train=train, heldout=heldout,
                                 n_eval=n_eval, corpus=corpus, log=None)


def build_optimizer(args, model, threads):
    """The optimizer asked for, on the model's two parameter groups, and its lr schedule."""
    import onebit

    kwargs = dict(lr=args.lr, process_group=None, threads=threads, timeout=args.timeout)
    if args.optimizer != "lamb" and args.freeze_step is not None:
        kwargs["freeze_step"] = args.freeze_step
    if args.optimizer != "lamb" and args.freeze_step in (None, "auto"):
        # As the README advises for a run of known length (and as `onebit train` does): the automatic
        # warmup ends once it has sent the bytes of 20% of the steps in fp32 (20% of the steps, or 40%
        # with a 16-bit warmup exchange), so the whole run sends at least 4.4x fewer bytes than LAMB.
        bits = 32 if args.opt.get("warmup_exchange", "fp32") == "fp32" else 16
        ceiling = max(1, round(0.2 * 32 / bits * args.steps))
        kwargs["auto_freeze"] = dict(min_steps=min(10, ceiling), max_steps=ceiling)
    kwargs.update(args.opt)
    opt = getattr(onebit, OPTIMIZERS[args.optimizer])(param_groups(model, args.weight_decay), **kwargs)
    warmup = int(round(0.1 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i + 1, warmup, args.steps))
    return opt, sched


def write(run, record):
    """One line of metrics.jsonl (rank 0 only)."""
    if run.log:
        run.log.write(json.dumps(record) + "\n")
        run.log.flush()


def train_step(args, run, step):
    """One optimizer step over this rank's share of the global batch; returns the step's record
    (without the held-out loss) and updates run's totals."""
    opt = run.opt
    t0 = time.perf_counter()
    before = opt.comm.stats()
    lr = opt.param_groups[0]["lr"]
    warm = args.optimizer != "lamb" and opt.in_warmup
    stage = "fp32" if args.optimizer == "lamb" else "warmup" if warm else "compression"
    batch = run.batches.rows(step)
    local_loss = 0.0
    for chunk in batch.split(run.micro):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = run.model(chunk[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        loss = loss / (run.local_batch * args.seq)  # the gradient of the whole local batch's mean
        loss.backward()
        local_loss += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), 1.0).item()
    opt.step()
    run.sched.step()
    opt.zero_grad()
    if warm and not opt.in_warmup:
        run.freeze_step = step  # the last warmup step: compression begins with the next
    run.skipped += opt.last_step_skipped
    after = opt.comm.stats()
    reduced = torch.tensor([local_loss], dtype=torch.float64)
    dist.all_reduce(reduced)
    run.train_loss = reduced.item() / run.world
    sent = after["bytes_sent"] - before["bytes_sent"]
    run.total_sent += sent
    wall, comm_s = time.perf_counter() - t0, after["seconds"] - before["seconds"]
    rec = {"step": step, "samples": step * args.batch, "loss": run.train_loss, "lr": lr, "stage": stage,
           "bytes_sent": sent, "total_bytes_sent": run.total_sent, "compute_seconds": wall - comm_s,
           "comm_seconds": comm_s, "grad_norm": grad_norm}
    if opt.last_step_skipped:
        rec["skipped"] = True
    return rec


def evaluate_step(args, run, step, rec):
    """Every eval_every steps and at the last: the held-out loss into rec, and a progress line (rank 0)."""
    if step % args.eval_every == 0 or step == args.steps:
        run.heldout_loss = rec["heldout_loss"] = evaluate(run.model, run.heldout, run.rank, run.world)
        if run.rank == 0:
            print("step %d/%d  loss %.4f  held-out %.4f  %s  sent %.2f MB  %.1f s" % (
                step, args.steps, run.train_loss, run.heldout_loss, rec["stage"], run.total_sent / 1e6,
                time.perf_counter() - run.t_train), flush=True)


def train(args, run):
    """The held-out loss at step 0, then every step, each a record of metrics.jsonl; returns the
    seconds of training."""
    run.heldout_loss = evaluate(run.model, run.heldout, run.rank, run.world)
    write(run, {"step": 0, "samples": 0, "heldout_loss": run.heldout_loss, "total_bytes_sent": 0})
    run.opt.comm.reset_stats()  # count training traffic only
    run.freeze_step, run.total_sent, run.train_loss, run.skipped = None, 0, float("nan"), 0
    run.t_train = time.perf_counter()
    for step in range(1, args.steps + 1):
        rec = train_step(args, run, step)
        evaluate_step(args, run, step, rec)
        write(run, rec)
    return time.perf_counter() - run.t_train


def write_summary(args, run, train_seconds, t_start):
    """summary.json (rank 0), in the format of `onebit train`, and the closing line."""
    n_params = sum(p.numel() for p in run.model.parameters())
    summary = {
        "optimizer": args.optimizer, "steps": args.steps, "samples": args.steps * args.batch,
        "batch": args.batch, "world_size": run.world, "backend": "gloo", "threads_per_rank": run.threads,
        "final_heldout_loss": run.heldout_loss, "final_train_loss": run.train_loss, "bytes_sent": run.total_sent,
        "freeze_step": run.freeze_step if args.optimizer != "lamb" else None, "skipped_steps": run.skipped,
        "parameters": n_params, "heldout_sequences_evaluated": run.n_eval,
        "samples_per_second": args.steps * args.batch / train_seconds, "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - t_start, "ranks_identical": True,
        "model": {"hidden": 96, "layers": 2, "heads": 4, "intermediate": 384, "vocab": 256,
                  "tied_head": False, "framework": "torch %s" % torch.__version__},
        "corpus": run.corpus,
        "options": vars(args)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print("causal_lm.py: %s, %d steps x %d sequences on %d ranks: held-out loss %.4f, sent %.2f MB per rank, "
          "%.1f s -> %s" % (args.optimizer, args.steps, args.batch, run.world, run.heldout_loss,
                            run.total_sent / 1e6, summary["wall_seconds"], args.out), flush=True)


def main():
    t_start = time.perf_counter()
    args = parse_args()
    run = setup(args)
    torch.manual_seed(args.seed)  # the same initial model on every rank
    run.model = CausalLM(seq=args.seq)
    run.opt, run.sched = build_optimizer(args, run.model, run.threads)
    check_identical(run.model, run.world, "at the start")
    run.batches = Batches(run.train, args, run.rank, run.local_batch)
    if run.rank == 0:
        os.makedirs(args.out, exist_ok=True)
        run.log = open(os.path.join(args.out, "metrics.jsonl"), "w")

    train_seconds = train(args, run)
    check_identical(run.model, run.world, "at the end")
    if run.rank == 0:
        run.log.close()
        write_summary(args, run, train_seconds, t_start)
    dist.barrier()
    # Free the optimizer (its communicator) while torch still holds the process group: a onebit
    # Communicator dropping the group's last reference joins Gloo's worker threads with the GIL
    # held, and deadlocks if a worker is still freeing a tensor (seen here at exit).
    del run.sched, run.opt
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
