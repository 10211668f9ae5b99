"""onebit's torch optimizers on CUDA parameters (world size 1): the flat buffers stay on the GPU with
the parameters as views, and OnebitLamb through warmup, a skipped step and compression is bitwise
equal to the same optimizer on CPU parameters, over the NCCL Communicator and over a c10d
ProcessGroupNCCL. Skipped where there is no GPU or onebit was built without CUDA."""
import pytest
import torch
import torch.distributed as dist

import _scenarios as sc
import onebit
from onebit import _onebit

pytestmark = [
    pytest.mark.skipif(not _onebit.built_with_cuda, reason="onebit was built without CUDA (ONEBIT_WITH_CUDA)"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine (the GPU run is "
                       "bench/gpu/torch_phase.sh)"),
]

STEPS, FREEZE, BAD_STEP, MASKED = 8, 3, 5, 3
OPTIONS = dict(lr=0.01, weight_decay=0.01, freeze_step=FREEZE)


def gradients():
    g = sc.gradients(1, STEPS, exact_steps=0)[0]
    g[BAD_STEP, 7] = float("inf")  # every optimizer skips this step
    return g


def bits(t):
    return t.detach().float().cpu().contiguous().view(torch.int32)


def run(device, process_group=None):
    """OnebitLamb on parameters on `device`: the weights after every step, the skips, the state."""
    params = [torch.nn.Parameter(p.detach().to(device)) for p in sc.make_params(sc.initial_params())]
    mask = (torch.arange(params[MASKED].numel()) % 2).float().view_as(params[MASKED]).to(device)
    opt = onebit.OnebitLamb(params, process_group=process_group, momentum_masks={params[MASKED]: mask}, **OPTIONS)
    flat = opt._engines[0].flat_params
    assert flat.device == torch.device(device)
    off = 0
    for i, p in enumerate(params):  # fp32 parameters are views into the flat buffer, wherever it is
        assert opt._engines[0].is_view(i) and p.data_ptr() == flat.data_ptr() + 4 * off
        off += p.numel()
    grads, weights, skipped = gradients().to(device), [], []
    for s in range(STEPS):
        sc.set_grads(params, grads[s])
        opt.step()
        skipped.append(opt.last_step_skipped)
        weights.append(bits(sc.cat(params)))
    core = opt.state_dict()["onebit"][0]
    return weights, skipped, core, opt.comm


def expect_same(cpu, gpu):
    cpu_weights, cpu_skipped, cpu_core, _ = cpu
    gpu_weights, gpu_skipped, gpu_core, _ = gpu
    assert gpu_skipped == cpu_skipped and gpu_skipped[BAD_STEP] and sum(gpu_skipped) == 1
    for s, (a, b) in enumerate(zip(cpu_weights, gpu_weights)):
        assert torch.equal(a, b), "weights differ after step %d" % (s + 1)
    assert gpu_core["counters"] == cpu_core["counters"]
    assert gpu_core["tensors"].keys() == cpu_core["tensors"].keys()
    for key, value in cpu_core["tensors"].items():
        assert torch.equal(bits(value), bits(gpu_core["tensors"][key])), key


def test_onebit_lamb_on_cuda_over_the_nccl_communicator_equals_the_cpu_bit_for_bit():
    comm = _onebit.nccl_communicator(_onebit.nccl_unique_id(), 0, 1, device=0, timeout=60.0)
    assert comm.backend == "nccl" and comm.device_memory
    gpu = run("cuda:0", process_group=comm)
    expect_same(run("cpu"), gpu)
    assert comm.stats()["calls"] > 0


def test_onebit_lamb_on_cuda_over_process_group_nccl_equals_the_cpu_bit_for_bit(tmp_path):
    cpu = run("cpu")  # before the default group exists: world size 1 without an engine
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        gpu = run("cuda:0")  # over the default group
        comm = gpu[3]
        assert comm.backend == "c10d-nccl" and comm.device_memory  # no host staging
        expect_same(cpu, gpu)
        assert comm.stats()["calls"] > 0
    finally:
        dist.destroy_process_group()


def test_parameters_on_different_devices_are_an_error():
    def mixed():
        return [torch.zeros(3, device="cuda:0", requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="one optimizer takes parameters on one device"):
        onebit.Lamb(mixed())
    with pytest.raises(ValueError, match="one optimizer takes parameters on one device"):
        onebit.Lamb([{"params": mixed()[:1]}, {"params": mixed()[1:]}])
    # The engine's own check, for C++ users and each parameter group.
    with pytest.raises(onebit.Error, match="must all be on the CPU or all on one GPU"):
        _onebit.Engine("lamb", mixed(), {}, _onebit.single_rank_communicator())


def test_grad_scaler_fp16_skips_an_overflowing_step_and_backs_off():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)).cuda()
    opt = onebit.OnebitLamb(model.parameters(), lr=0.02, freeze_step=5)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0) if hasattr(torch.amp, "GradScaler") \
        else torch.cuda.amp.GradScaler(init_scale=1024.0)
    x, y = (t.cuda() for t in sc.regression_data(256, seed=1))
    losses = []
    for s in range(40):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(x)
        assert out.dtype == torch.float16
        loss = torch.nn.functional.mse_loss(out.float(), y)
        scaled = scaler.scale(loss)
        if s == 10:
            scaled = scaled * float("inf")  # an overflow: the step must be skipped, the scale halved
            weights, scale = sc.cat(model.parameters()).clone(), scaler.get_scale()
        scaled.backward()
        scaler.step(opt)
        scaler.update()
        if s == 10:
            assert opt.last_step_skipped and torch.equal(sc.cat(model.parameters()), weights)
            assert scaler.get_scale() == scale / 2
        losses.append(loss.item())
    assert opt.skipped_steps >= 1 and not opt.in_warmup
    assert losses[-1] < 0.5 * losses[0]
