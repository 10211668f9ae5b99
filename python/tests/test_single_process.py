"""onebit's torch optimizers in one process (world size 1, no torch.distributed): the torch.optim
contract, dtypes, masks, schedulers, state_dict checks and configuration errors."""
import io
import os
import subprocess
import sys

import pytest
import torch

import _scenarios as sc
import onebit
from onebit import _onebit


def run(opt, params, grads, steps):
    for s in range(steps):
        sc.set_grads(params, grads[0, s])
        opt.step()
    return sc.cat(params)


def test_import_works_from_any_directory():
    out = subprocess.run([sys.executable, "-c", "import onebit; print(onebit.OnebitLamb.__name__)"],
                         cwd="/", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OnebitLamb"


def test_without_a_process_group_the_world_is_one_rank():
    params = sc.make_params(sc.initial_params())
    opt = onebit.OnebitLamb(params, freeze_step=2)
    assert opt.world_size == 1 and opt.rank == 0 and opt.comm.backend == "single"


def test_onebit_lamb_that_never_compresses_is_lamb_bit_for_bit():
    grads = sc.gradients(1, 6, exact_steps=0)
    a, b = sc.make_params(sc.initial_params()), sc.make_params(sc.initial_params())
    lamb = run(onebit.Lamb(a, lr=0.01, weight_decay=0.01), a, grads, 6)
    lamb1 = run(onebit.OnebitLamb(b, lr=0.01, weight_decay=0.01, freeze_step=6), b, grads, 6)
    assert torch.equal(lamb, lamb1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_and_gradients_use_fp32_master_weights(dtype):
    options = dict(lr=0.01, freeze_step=2)
    p0 = sc.initial_params().to(dtype)
    grads = sc.gradients(1, 5, exact_steps=0).to(dtype)
    params = [p.to(dtype) for p in sc.make_params(p0.float())]
    params = [torch.nn.Parameter(p.detach()) for p in params]
    opt = onebit.OnebitAdam(params, **options)
    for s in range(5):
        sc.set_grads(params, grads[0, s])
        opt.step()
    assert all(p.dtype == dtype for p in params)
    master = opt._engines[0].flat_params
    expect = onebit._onebit.reference_run("onebit-adam", options, sc.SIZES, p0.float(), grads.float())[0]
    assert torch.equal(master, expect)
    assert torch.equal(sc.cat(params), expect.to(dtype).float())
    assert "master_params" in opt.state_dict()["onebit"][0]["tensors"]


def test_overlap_alone_reports_its_buckets_and_a_bad_bucket_is_an_error():
    with pytest.raises(ValueError, match="bucket_mb"):
        onebit.Lamb(sc.mlp().parameters(), overlap=True, bucket_mb=0)
    model = sc.mlp()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=2, overlap=True, bucket_mb=0.0001)
    reports = []
    for s in range(3):
        x, y = sc.regression_data(16, seed=s)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        reports.append(opt.last_overlap)
    assert reports[0]["buckets"] == 4 and reports[1]["buckets"] == 4  # the warmup: 4 buckets of 1 tensor
    assert reports[2] is None  # compression: exchanged in step()


def test_parameters_and_gradients_are_views_of_the_flat_buffers():
    model = sc.mlp()
    opt = onebit.Lamb(model.parameters())
    flat, grads = opt._engines[0].flat_params, opt._engines[0].flat_grads
    w = model[0].weight
    assert w.data_ptr() == flat.data_ptr() and w.grad.data_ptr() == grads.data_ptr()
    model(torch.randn(4, 8)).sum().backward()
    assert w.grad.data_ptr() == grads.data_ptr() and grads.abs().sum() > 0
    opt.zero_grad()
    assert w.grad.data_ptr() == grads.data_ptr() and grads.abs().sum() == 0
    w.grad = None  # counts as a zero gradient, and the view comes back
    opt.step()
    assert w.grad.data_ptr() == grads.data_ptr()


def test_momentum_mask_keeps_masked_elements_still_in_the_compression_stage():
    params = sc.make_params(sc.initial_params())
    mask = torch.ones(130)
    mask[40:] = 0
    opt = onebit.OnebitLamb(params, lr=0.01, freeze_step=1, momentum_masks={params[3]: mask})
    grads = sc.gradients(1, 4, exact_steps=0)
    run(opt, params, grads, 1)
    after_warmup = params[3].detach().clone()
    run(opt, params, grads[:, 1:], 3)
    assert torch.equal(params[3][40:], after_warmup[40:])  # zero momentum, no weight decay
    assert not torch.equal(params[3][:40], after_warmup[:40])
    with pytest.raises(onebit.Error):
        opt.set_momentum_mask(params[0], torch.ones(3))
    adam_params = sc.make_params(sc.initial_params())
    with pytest.raises(onebit.Error, match="OnebitLamb"):
        onebit.OnebitAdam(adam_params, freeze_step=1).set_momentum_mask(adam_params[0], torch.ones(37))


def test_lr_schedulers_drive_the_learning_rate():
    grads = sc.gradients(1, 5, exact_steps=0)
    a, b, c = (sc.make_params(sc.initial_params()) for _ in range(3))
    oa = onebit.OnebitLamb(a, lr=0.01, freeze_step=2)
    sched = torch.optim.lr_scheduler.StepLR(oa, step_size=1, gamma=0.5)
    ob = onebit.OnebitLamb(b, lr=0.01, freeze_step=2)
    oc = onebit.OnebitLamb(c, lr=0.01, freeze_step=2)
    for s in range(5):
        for params, opt in ((a, oa), (b, ob), (c, oc)):
            sc.set_grads(params, grads[0, s])
        ob.param_groups[0]["lr"] = 0.01 * 0.5 ** s
        oa.step(), ob.step(), oc.step()
        sched.step()
    assert torch.equal(sc.cat(a), sc.cat(b))
    assert not torch.equal(sc.cat(a), sc.cat(c))


def test_parameter_groups_have_their_own_settings():
    # Each group is its own optimizer with its own lr and weight decay: the grouped optimizer gives
    # the same bits as one optimizer per group with those settings, and not those of shared ones.
    def train(make_optimizers):
        model = sc.mlp()
        opts = make_optimizers(model)
        g = torch.Generator().manual_seed(3)
        for _ in range(4):  # two warmup steps, two compression steps
            for opt in opts:
                opt.zero_grad()
            model(torch.randn(16, 8, generator=g)).pow(2).mean().backward()
            for opt in opts:
                opt.step()
        return [sc.cat(model[0].parameters()), sc.cat(model[2].parameters())], opts

    grouped, (opt,) = train(lambda m: [onebit.OnebitLamb(
        [{"params": m[0].parameters(), "lr": 0.1}, {"params": m[2].parameters(), "weight_decay": 0.1}],
        lr=0.01, weight_decay=0.0, freeze_step=2)])
    assert len(opt._engines) == 2 and not opt.in_warmup  # add_param_group: test_torch_conventions.py

    def separate(lr0, wd1):
        return train(lambda m: [onebit.OnebitLamb(m[0].parameters(), lr=lr0, weight_decay=0.0, freeze_step=2),
                                onebit.OnebitLamb(m[2].parameters(), lr=0.01, weight_decay=wd1, freeze_step=2)])[0]

    assert all(torch.equal(mine, theirs) for mine, theirs in zip(grouped, separate(0.1, 0.1)))
    assert not torch.equal(grouped[0], separate(0.01, 0.1)[0])  # the first group's lr took effect
    assert not torch.equal(grouped[1], separate(0.1, 0.0)[1])  # the second group's weight decay took effect


def test_closure_loss_is_returned():
    model = sc.mlp()
    opt = onebit.OnebitAdam(model.parameters(), freeze_step=1)
    x = torch.randn(8, 8)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    assert float(opt.step(closure)) > 0


def test_state_dict_survives_torch_save_and_checks_what_it_is_loaded_into():
    grads = sc.gradients(1, 5, exact_steps=0)
    params = sc.make_params(sc.initial_params())
    opt = onebit.OnebitLamb(params, lr=0.01, freeze_step=2)
    run(opt, params, grads, 3)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert set(sd["onebit"][0]["tensors"]) >= {"m", "v", "v_fresh", "worker_error", "server_error", "k"}
    assert sd["onebit"][0]["counters"]["step"] == 3

    other = sc.make_params(sc.initial_params())
    with pytest.raises(ValueError, match="freeze_step"):
        onebit.OnebitLamb(other, lr=0.01, freeze_step=3).load_state_dict(sd)
    wrong_rank = dict(sd, onebit=[dict(sd["onebit"][0], rank=1)])
    with pytest.raises(ValueError, match="rank 1"):
        onebit.OnebitLamb(sc.make_params(sc.initial_params()), freeze_step=2).load_state_dict(wrong_rank)
    with pytest.raises(ValueError, match="onebit-lamb"):
        onebit.OnebitAdam(sc.make_params(sc.initial_params()), freeze_step=2).load_state_dict(sd)
    fresh = sc.make_params(sc.initial_params())
    resumed = onebit.OnebitLamb(fresh, lr=0.5, freeze_step=2)
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["lr"] == 0.01 and not resumed.in_warmup


# The numbers in the messages matter too: formatting them is where a module with a mismatched C++
# runtime crashes (torch/python.cmake; the static-runtime test run repeats these).
@pytest.mark.parametrize("kwargs,match", [
    (dict(betas=(1.0, 0.999)), r"beta1 must be in \[0, 1\), got 1\b"),
    (dict(lr=-1.0), r"lr must be a finite number >= 0, got -1\b"),
    (dict(eps=0.0), r"eps must be > 0, got 0\b"),
    (dict(freeze_step="auto", auto_freeze=dict(min_steps=20, max_steps=10)),
     r"min_steps <= max_steps, got min_steps 20, max_steps 10\b"),
    (dict(factor_min=5.0), r"factor_min <= factor_max, got 5, 4\b"),
])
def test_bad_settings_are_named(kwargs, match):
    options = dict(freeze_step=2)
    options.update(kwargs)
    with pytest.raises(onebit.Error, match=match):
        onebit.OnebitLamb(sc.make_params(sc.initial_params()), **options)


def test_bad_calls_into_each_library_keep_their_numbers():
    one = _onebit.single_rank_communicator()
    with pytest.raises(onebit.Error, match=r"send 16 bytes, recv 12 bytes, world 1"):  # onebit_comm
        one.alltoall(torch.zeros(4), torch.zeros(3))
    with pytest.raises(onebit.Error, match=r"parameter 1 is Int, not a floating-point tensor"):  # onebit_torch
        _onebit.Engine("lamb", [torch.zeros(2), torch.zeros(3, dtype=torch.int32)], {}, one)
    with pytest.raises(onebit.Error, match=r"unknown option 'bogus'"):  # the module itself
        _onebit.Engine("lamb", [torch.zeros(2)], {"bogus": 1}, one)


def test_the_classes_send_the_registry_its_options_with_its_defaults():
    """The Python classes spell out their options for users; the C++ registry reads them. Each class
    must send only keys its entry has, every key but the optional auto_freeze bounds, and the same
    defaults (float32 values, "auto" for the automatic ones)."""
    kinds = {k["name"]: k for k in _onebit.optimizer_kinds()}
    classes = (onebit.Lamb, onebit.OnebitLamb, onebit.OnebitAdam)
    assert sorted(kinds) == sorted(cls._kind for cls in classes)
    for cls in classes:
        opt = cls(sc.make_params(sc.initial_params()))
        sent = opt._core_options(opt.param_groups[0], 1)
        entry = {o["key"]: o["default"] for o in kinds[cls._kind]["options"]}
        assert set(sent) <= set(entry), (cls._kind, set(sent) - set(entry))
        assert set(entry) - set(sent) <= {"auto_min_steps", "auto_max_steps", "auto_window", "auto_tolerance"}
        for key, value in sent.items():
            default = entry[key]
            if default == "auto":
                assert value in ("auto", -1), (cls._kind, key, value)
            elif isinstance(value, str):
                assert value == default, (cls._kind, key, value, default)
            else:
                assert torch.tensor(float(value)).item() == torch.tensor(float(default)).item(), \
                    (cls._kind, key, value, default)


def test_bad_watch_is_named():
    with pytest.raises(ValueError, match="watch must be False, True or"):
        onebit.Lamb(sc.make_params(sc.initial_params()), watch="rank 0")


def test_freeze_step_is_auto_unless_given_and_bad_ones_are_named():
    for cls in (onebit.OnebitLamb, onebit.OnebitAdam):
        params = sc.make_params(sc.initial_params())
        opt = cls(params, lr=0.01, auto_freeze=dict(min_steps=2, max_steps=3))
        assert opt.defaults["freeze_step"] == "auto" and opt.freeze_step is None
        for _ in range(3):
            assert opt.in_warmup
            for p in params:
                p.grad = torch.randn_like(p)
            opt.step()
        assert not opt.in_warmup and opt.freeze_step in (2, 3)
        assert cls(sc.make_params(sc.initial_params()), freeze_step=4).freeze_step == 4
        if cls is onebit.OnebitLamb:  # docs/algorithm.md §10: on with "auto", off with a given step
            assert opt.defaults["refresh_interval"] == -1 and opt.defaults["track_scales"] == -1
            paper = cls(sc.make_params(sc.initial_params()), freeze_step=1, refresh_interval=2, track_scales=True)
            assert paper.defaults["refresh_interval"] == 2 and paper.defaults["track_scales"] == 1
        for bad in (0, -1, 2.5, "often", True):
            with pytest.raises(ValueError, match="freeze_step must be a positive integer .* or 'auto'"):
                cls(sc.make_params(sc.initial_params()), freeze_step=bad)
        with pytest.raises(ValueError, match="auto_freeze takes min_steps, max_steps, window, tolerance, not steps"):
            cls(sc.make_params(sc.initial_params()), auto_freeze=dict(steps=3))


def test_the_example_trains_on_two_processes():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train_onebit_lamb.py")
    out = subprocess.run([sys.executable, example, "--world-size", "2", "--steps", "60"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "held-out loss" in out.stdout
