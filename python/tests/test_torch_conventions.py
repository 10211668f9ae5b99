"""onebit's optimizers keep torch.optim's conventions (world size 1): lr schedulers, zero_grad with
set_to_none, parameters without a gradient, add_param_group, state_dict through torch.save in another
process, clip_grad_norm_, autocast, GradScaler's contract and torch.compile."""
import gc
import os
import subprocess
import sys

import pytest
import torch

import _scenarios as sc
import onebit
from onebit import _onebit

HERE = os.path.dirname(os.path.abspath(__file__))


def bits(params):
    return sc.cat(params).view(torch.int32)


def train(model, opt, steps, seed=0, before_step=None, zero_grad=None):
    """steps of MSE regression on fixed batches; before_step(model) runs between backward and step."""
    for s in range(steps):
        x, y = sc.regression_data(16, seed=seed + s)
        (zero_grad or opt.zero_grad)()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if before_step:
            before_step(model)
        opt.step()


@pytest.mark.parametrize("make_scheduler", [
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step)),
    lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=8, cycle_momentum=False),
], ids=["LambdaLR", "OneCycleLR"])
def test_lr_schedulers_set_the_rate_each_step_uses(make_scheduler):
    a, b = sc.mlp(), sc.mlp()
    oa = onebit.OnebitLamb(a.parameters(), lr=0.02, freeze_step=3)
    ob = onebit.OnebitLamb(b.parameters(), lr=0.02, freeze_step=3)
    sched = make_scheduler(oa)
    rates = []
    for s in range(8):
        rates.append(oa.param_groups[0]["lr"])
        ob.param_groups[0]["lr"] = rates[-1]  # by hand, the same rate
        for model, opt in ((a, oa), (b, ob)):
            x, y = sc.regression_data(16, seed=s)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        sched.step()
    assert len(set(rates)) > 4  # the schedule did move the rate
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    c = sc.mlp()  # and the rate matters: a constant one ends elsewhere
    train(c, onebit.OnebitLamb(c.parameters(), lr=0.02, freeze_step=3), 8)
    assert not torch.equal(bits(a.parameters()), bits(c.parameters()))


def test_a_scheduler_that_cycles_momentum_is_a_clear_error():
    model = sc.mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=3)
    torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=8)  # cycle_momentum=True: moves beta1
    model(torch.randn(2, 8)).sum().backward()
    with pytest.raises(ValueError, match=r"betas changed .* only lr may change .*cycle_momentum=False"):
        opt.step()


def test_zero_grad_set_to_none_leaves_no_gradient_and_the_same_steps():
    a, b = sc.mlp(), sc.mlp()
    oa = onebit.OnebitAdam(a.parameters(), lr=0.01, freeze_step=2)
    ob = onebit.OnebitAdam(b.parameters(), lr=0.01, freeze_step=2)
    a(torch.randn(2, 8)).sum().backward()
    oa.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in a.parameters())
    train(a, oa, 5, zero_grad=lambda: oa.zero_grad(set_to_none=True))
    train(b, ob, 5)  # the default: .grad stays a zeroed view into the flat buffer
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    assert all(p.grad is not None for p in b.parameters())


class TwoHeads(torch.nn.Module):
    """A model whose second head gets no gradient when it is not used."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.head, self.other = torch.nn.Linear(8, 16), torch.nn.Linear(16, 1), torch.nn.Linear(16, 1)

    def forward(self, x, use_other=False):
        h = torch.tanh(self.body(x))
        return self.other(h) if use_other else self.head(h)


def test_a_parameter_without_a_gradient_counts_as_zero():
    a, b = TwoHeads(), TwoHeads()
    oa = onebit.OnebitLamb(a.parameters(), lr=0.01, freeze_step=2)
    ob = onebit.OnebitLamb(b.parameters(), lr=0.01, freeze_step=2)
    other0 = a.other.weight.detach().clone()
    for s in range(4):
        x, y = sc.regression_data(16, seed=s)
        oa.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(a(x), y).backward()
        assert a.other.weight.grad is None  # torch leaves it so
        oa.step()
        ob.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(b(x), y).backward()
        for p in b.other.parameters():
            p.grad = torch.zeros_like(p)
        ob.step()
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    assert not torch.equal(a.head.weight, TwoHeads().head.weight)  # the used head trained
    assert torch.equal(a.other.weight, other0)  # zero gradient, no weight decay: the unused one did not


def test_add_param_group_gives_the_new_group_its_own_settings():
    a, b = sc.mlp(), sc.mlp()
    together = onebit.OnebitLamb([{"params": a[0].parameters()}, {"params": a[2].parameters(), "lr": 0.05}],
                                 lr=0.01, freeze_step=2)
    added = onebit.OnebitLamb(b[0].parameters(), lr=0.01, freeze_step=2)
    added.add_param_group({"params": b[2].parameters(), "lr": 0.05})
    assert len(added.param_groups) == 2 and added.param_groups[1]["freeze_step"] == 2
    train(a, together, 5)
    train(b, added, 5)
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    # A group added later starts its own state at step 0 and trains from there.
    c = sc.mlp()
    late = onebit.OnebitLamb(c[0].parameters(), lr=0.01, freeze_step=2)
    train(c, late, 3)
    last = c[2].weight.detach().clone()
    late.add_param_group({"params": c[2].parameters()})
    train(c, late, 3, seed=3)
    assert not torch.equal(c[2].weight, last)
    assert late.state_dict()["onebit"][1]["counters"]["step"] == 3
    with pytest.raises(ValueError, match="more than one parameter group"):
        late.add_param_group({"params": [c[0].weight]})
    assert len(late.param_groups) == 2


def test_state_dict_through_torch_save_continues_bit_for_bit_in_another_process(tmp_path):
    model = sc.mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.01, freeze_step=2, weight_decay=0.01)
    train(model, opt, 4)  # past the freeze: error buffers, frozen variance, scales
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    train(model, opt, 4, seed=4)
    torch.save(sc.cat(model.parameters()), tmp_path / "here.pt")
    code = """
import sys, torch
sys.path.insert(0, %r)
import _scenarios as sc, onebit
from test_torch_conventions import train
ckpt = torch.load(%r)
model = sc.mlp(seed=5)
model.load_state_dict(ckpt["model"])
opt = onebit.OnebitLamb(model.parameters(), lr=0.5, freeze_step=2, weight_decay=0.01)
opt.load_state_dict(ckpt["opt"])
assert not opt.in_warmup and opt.param_groups[0]["lr"] == 0.01
train(model, opt, 4, seed=4)
torch.save(sc.cat(model.parameters()), %r)
""" % (HERE, str(tmp_path / "ckpt.pt"), str(tmp_path / "there.pt"))
    out = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    here, there = torch.load(tmp_path / "here.pt"), torch.load(tmp_path / "there.pt")
    assert torch.equal(here.view(torch.int32), there.view(torch.int32))


def test_clip_grad_norm_before_step_clips_what_the_step_uses():
    a, b = sc.mlp(), sc.mlp()
    oa = onebit.OnebitLamb(a.parameters(), lr=0.01, freeze_step=2)
    ob = onebit.OnebitLamb(b.parameters(), lr=0.01, freeze_step=2)
    norms = []

    def clip(model):
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)))

    def clip_by_hand(model):  # the same factor torch computes, applied to copies of the gradients
        total = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in model.parameters()]), 2.0)
        factor = torch.clamp(0.05 / (total + 1e-6), max=1.0)
        for p in model.parameters():
            p.grad = p.grad.detach().clone().mul_(factor)

    train(a, oa, 5, before_step=clip)
    train(b, ob, 5, before_step=clip_by_hand)
    assert min(norms) > 0.05  # every step was clipped
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    c = sc.mlp()
    train(c, onebit.OnebitLamb(c.parameters(), lr=0.01, freeze_step=2), 5)
    assert not torch.equal(bits(a.parameters()), bits(c.parameters()))


def test_autocast_bf16_on_the_cpu_trains_fp32_parameters():
    model = sc.mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=5)
    x, y = sc.regression_data(256, seed=1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        assert out.dtype == torch.bfloat16
        loss = torch.nn.functional.mse_loss(out.float(), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    flat = opt._engines[0].flat_grads
    assert model[0].weight.grad.data_ptr() == flat.data_ptr()  # still views: no copy per step
    assert not opt.in_warmup and losses[-1] < 0.75 * losses[0]


class ScalerOfTorch1:
    """torch 1.x's GradScaler contract as its step() drives an optimizer whose
    _step_supports_amp_scaling is True (torch/cuda/amp/grad_scaler.py), on the CPU, where 1.x's
    GradScaler cannot run: step(grad_scaler=self), unscale_, per-optimizer found_inf."""

    class Stage:
        def __init__(self, name):
            self.name = name

    def __init__(self, scale):
        self._scale = torch.full((1,), scale)
        self._per_optimizer_states = {}

    def scale(self, loss):
        return loss * self._scale

    def unscale_(self, opt):
        state = self._per_optimizer_states[id(opt)]
        inv = self._scale.double().reciprocal().float()
        found = torch.zeros(1)
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    found += (~torch.isfinite(p.grad)).any().float()
                    p.grad.mul_(inv)
        state["found_inf_per_device"] = {torch.device("cpu"): (found > 0).float()}
        state["stage"] = self.Stage("UNSCALED")

    def step(self, opt):
        self._per_optimizer_states[id(opt)] = {"stage": self.Stage("READY"), "found_inf_per_device": {}}
        assert opt._step_supports_amp_scaling
        opt.step(grad_scaler=self)
        return self._per_optimizer_states[id(opt)]["found_inf_per_device"][torch.device("cpu")].item()


def test_grad_scaler_contracts_unscale_in_step_and_record_the_skip():
    a, b, c = sc.mlp(), sc.mlp(), sc.mlp()
    plain = onebit.OnebitLamb(a.parameters(), lr=0.01, freeze_step=2)
    torch1 = onebit.OnebitLamb(b.parameters(), lr=0.01, freeze_step=2)
    torch2 = onebit.OnebitLamb(c.parameters(), lr=0.01, freeze_step=2)
    scaler = ScalerOfTorch1(1024.0)  # a power of two: unscaling is exact, so the bits must match
    for s in range(5):
        x, y = sc.regression_data(16, seed=s)
        plain.zero_grad()
        torch.nn.functional.mse_loss(a(x), y).backward()
        plain.step()
        torch1.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(b(x), y)).backward()
        assert scaler.step(torch1) == 0.0
        torch2.zero_grad()  # torch 2.x: GradScaler sets grad_scale (and found_inf) around step()
        (torch.nn.functional.mse_loss(c(x), y) * 1024.0).backward()
        torch2.grad_scale = torch.full((1,), 1024.0)
        torch2.step()
        del torch2.grad_scale
    assert torch.equal(bits(a.parameters()), bits(b.parameters()))
    assert torch.equal(bits(a.parameters()), bits(c.parameters()))
    before = bits(b.parameters()).clone()
    torch1.zero_grad()
    scaler.scale(b(torch.randn(4, 8)).sum() * float("inf")).backward()
    assert scaler.step(torch1) == 1.0 and torch1.last_step_skipped  # the skip every rank took
    assert torch.equal(bits(b.parameters()), before)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch %s has no torch.compile (2.0 and later)"
                    % torch.__version__)
def test_a_compiled_model_trains():
    model = sc.mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=5)
    compiled = torch.compile(model)
    x, y = sc.regression_data(256, seed=1)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert not opt.in_warmup and losses[-1] < 0.75 * losses[0]


def test_step_takes_no_unknown_keywords():
    opt = onebit.Lamb(sc.mlp().parameters())
    with pytest.raises(TypeError, match="unexpected keyword arguments bogus"):
        opt.step(bogus=1)


def test_a_communicator_dropped_by_python_is_destroyed_without_the_gil():
    # The deadlock at exit: a c10d communicator's last reference dropping the ProcessGroup while the
    # GIL is held. Every Communicator handed to Python lets the GIL go in its deleter.
    gc.collect()  # optimizers of earlier tests
    before = _onebit._communicators_released_without_gil()
    comm = _onebit.single_rank_communicator()
    opt = onebit.Lamb(sc.mlp().parameters(), process_group=comm)
    del comm
    assert _onebit._communicators_released_without_gil() == before  # the optimizer still holds it
    del opt
    gc.collect()
    assert _onebit._communicators_released_without_gil() == before + 1
