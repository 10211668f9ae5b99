"""onebit's torch optimizers on real processes over torch.distributed with Gloo (world sizes 1, 2, 4)."""
import pytest
import torch

import _scenarios as sc
import onebit
from _launch import run_ranks

WORLDS = [1, 2, 4]
LAMB1 = dict(lr=0.01, freeze_step=3, weight_decay=0.01)
ADAM1 = dict(lr=0.01, freeze_step=3, weight_decay=0.01)


def assert_ranks_identical(results):
    for r, res in enumerate(results[1:], start=1):
        for s, (a, b) in enumerate(zip(results[0]["history"], res["history"])):
            assert torch.equal(a, b), "rank %d differs from rank 0 after step %d" % (r, s + 1)


@pytest.mark.parametrize("world", WORLDS)
def test_collectives_over_gloo(world, tmp_path):
    results = run_ranks("collectives", world, tmp_path)
    for rank, res in enumerate(results):
        assert res["backend"] == "c10d-gloo" and res["size"] == world and res["rank"] == rank
        expect = torch.arange(10, dtype=torch.float32) * sum(range(1, world + 1))
        assert torch.equal(res["sum"], expect)
        assert res["alltoall"].tolist() == [16 * src + rank for src in range(world) for _ in range(3)]
        assert res["allgather"].tolist() == [v for r in range(world) for v in (r, 200 + r)]
        assert res["broadcast"].tolist() == [world - 1] * 5
        assert res["stats"]["calls"] == 5


@pytest.mark.parametrize("world", WORLDS)
def test_warmup_equals_single_process_lamb_on_the_whole_batch(world, tmp_path):
    steps, batch = 6, 32
    results = run_ranks("warmup", world, tmp_path, steps=steps, batch=batch)
    assert_ranks_identical(results)
    assert results[0]["in_warmup"]
    # The reference: onebit.Lamb in this process (world size 1) on the whole batch per step.
    model = sc.mlp()
    lamb = onebit.Lamb(model.parameters(), lr=0.02, weight_decay=0.01)
    assert lamb.world_size == 1
    for s in range(steps):
        x, y = sc.regression_data(batch, seed=100 + s)
        lamb.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        lamb.step()
        got = results[0]["history"][s]
        # Only the order of the fp32 gradient sums differs (per-shard means, then Gloo's allreduce):
        # a few ulps in the gradient, which LAMB's per-layer normalization keeps at that size.
        torch.testing.assert_close(got, sc.cat(model.parameters()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("world", WORLDS + [3])
@pytest.mark.parametrize("kind,options", [("onebit-lamb", LAMB1), ("onebit-adam", ADAM1)])
def test_compression_stage_equals_the_core_and_ranks_stay_identical(world, kind, options, tmp_path):
    steps, exact = 8, 3
    results = run_ranks("steps_vs_core", world, tmp_path, kind=kind, options=options, steps=steps,
                        exact_steps=exact)
    assert_ranks_identical(results)
    # The C++ core on the same inputs, its ranks as threads over the local backend. Warmup gradients
    # are exactly summable, so Gloo's allreduce and the local one agree bit for bit; the
    # compression stage exchanges only bits and scales, so everything must match exactly.
    expect = onebit._onebit.reference_run(kind, sc.core_options(options), sc.SIZES, sc.initial_params(),
                                          sc.gradients(world, steps, exact))
    for rank, res in enumerate(results):
        assert torch.equal(res["history"][-1], expect[rank]), "rank %d differs from the C++ core" % rank
    # The run did reach the compression stage and moved the parameters there.
    assert not torch.equal(results[0]["history"][-1], results[0]["history"][exact - 1])


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("first,freeze_step", [(2, 3), (4, 2)])  # stopped in warmup, in compression
def test_state_dict_resumes_bit_for_bit(world, first, freeze_step, tmp_path):
    options = dict(lr=0.01, freeze_step=freeze_step, weight_decay=0.01)
    kw = dict(options=options, first=first, second=4)
    straight = run_ranks("resume", world, tmp_path, phase="first", **kw)
    resumed = run_ranks("resume", world, tmp_path, phase="second", **kw)
    for rank in range(world):
        assert resumed[rank]["in_warmup_at_stop"] == (first < freeze_step)
        for s, (a, b) in enumerate(zip(straight[rank]["history"], resumed[rank]["history"])):
            assert torch.equal(a, b), "rank %d: step %d after the resume differs" % (rank, first + 1 + s)


def test_another_world_size_needs_reset_errors_on_resize(tmp_path):
    options = dict(lr=0.01, freeze_step=2, weight_decay=0.01)
    run_ranks("resume", 2, tmp_path, phase="first", options=options, first=4, second=0)
    results = run_ranks("resize", 4, tmp_path, options=options, saved_world=2, steps=3)
    for res in results:
        assert "saved by 2 ranks, this run has 4" in res["refused"]
        assert "reset_errors_on_resize=True" in res["refused"]
        assert len(res["warnings"]) == 1 and "restart from zero" in res["warnings"][0], res["warnings"]
        assert res["errors_zero"] and not res["in_warmup"]
        assert torch.equal(res["params"], results[0]["params"])


@pytest.mark.parametrize("world", [2, 4])
def test_overlap_with_backward_keeps_every_bit(world, tmp_path):
    """overlap=True: the warmup's bf16 exchange starts during the last backward, bucket by bucket,
    and backward returns with the average; the steps are bit for bit those without overlap."""
    plain = run_ranks("overlap", world, tmp_path, steps=5, overlap=False)
    overlapped = run_ranks("overlap", world, tmp_path, steps=5, overlap=True)
    assert_ranks_identical(overlapped)
    for a, b in zip(plain, overlapped):
        for s in range(5):
            assert torch.equal(a["history"][s], b["history"][s]), "step %d differs" % (s + 1)
    for s, report in enumerate(overlapped[0]["reports"]):
        if s < 3:  # the warmup: overlapped, and the gradients after backward are the average already
            assert report["buckets"] >= 3 and report["started_in_backward"] >= 1, report
            assert torch.equal(overlapped[0]["grads"][s], overlapped[-1]["grads"][s])
        else:  # compression: exchanged in step()
            assert report is None
    assert all(r is None for r in plain[0]["reports"])


def test_training_on_4_ranks_lowers_the_held_out_loss(tmp_path):
    results = run_ranks("train", 4, tmp_path, steps=150, freeze_step=30)
    assert not results[0]["in_warmup"]
    for res in results[1:]:
        assert torch.equal(res["params"], results[0]["params"])
    before, after = results[0]["before"], results[0]["after"]
    print("held-out mse: %.4f -> %.4f, bytes sent by rank 0: %d" % (before, after, results[0]["bytes_sent"]))
    assert after < 0.5 * before


def test_a_missing_rank_ends_in_an_error_not_a_hang(tmp_path):
    res = run_ranks("timeout", 2, tmp_path)[0]
    assert res["error"] is not None and "barrier on rank 0" in res["error"]
    assert res["seconds"] < 30
    assert "failed earlier" in res["after"]


@pytest.mark.parametrize("kill_step", [1, 4])  # in warmup, in the compression stage
def test_a_killed_rank_is_named_by_the_others_within_the_timeout(kill_step, tmp_path):
    options = dict(LAMB1, timeout=10.0, watch=True)
    results = run_ranks("killed_rank", 3, tmp_path, killed=(2,), kind="onebit-lamb", options=options,
                        kill_step=kill_step)
    for res in results[:2]:
        assert res["step"] == kill_step and res["error"] is not None
        assert "lost: rank 2 (no heartbeat" in res["error"], res["error"]
        assert res["seconds"] < 10.0


@pytest.mark.parametrize("kind,options", [("onebit-lamb", LAMB1), ("onebit-adam", ADAM1)])
@pytest.mark.parametrize("bad_step", [1, 4])  # in warmup, in the compression stage
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(kind, options, bad_step, tmp_path):
    results = run_ranks("nan_skip", 2, tmp_path, kind=kind, options=options, bad_step=bad_step)
    assert_ranks_identical(results)
    for res in results:
        assert res["skipped"] == [s == bad_step for s in range(bad_step + 2)]
        assert res["skipped_steps"] == 1
        assert torch.equal(res["history"][bad_step], res["history"][bad_step - 1])
