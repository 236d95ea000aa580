"""The cluster (kvsched.cluster, docs/cluster.md): a 1-replica cluster is the single-replica
simulator byte for byte, replicas that read no state equal independent runs on their share of
the trace, same seed gives same bytes, every scheduler runs in every replica under every
router with the invariants of one replica, and disaggregation hands KV over as documented."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import create_scheduler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsched.cli import main
from kvsched.cluster import Disaggregation, simulate_cluster
from kvsched.cluster.metrics import cluster_requests_frame, cluster_steps_frame, cluster_summary, imbalance
from kvsched.kvcache import blocks_for
from kvsched.loop import SchedulingError
from kvsched.metrics import requests_frame, steps_frame
from kvsched.predictors import with_predictions
from kvsched.registry import COST_MODELS, ROUTERS, SCHEDULERS
from kvsched.request import Request, RequestStatus
from kvsched.results import load_table
from kvsched.schedulers.clearing import InfeasibleSchedule
from kvsched.sim import simulate
from kvsched.sim.cost import AffinePrefillCost
from kvsched.workload import build_workload

COST = AffinePrefillCost(d0_s=0.01, d1_s_per_token=1e-4, d2_s_per_prefill_token=1e-3)
# Schedulers whose decode replicas take prefilled requests (docs/cluster.md); the others are refused.
DECODE_CAPABLE = {"fcfs-static", "nested-wait", "sjf", "sorted-f", "srpt", "vllm", "wait", "zhou-jiang"}


def _requests(specs, seed=0):
    plain = [Request(i, t, p, o) for i, (t, p, o) in enumerate(specs)]
    rng = np.random.default_rng(seed)
    points = with_predictions(plain, "relative:eps=0.5", rng)
    intervals = with_predictions(plain, "interval-ratio:alpha=0.5", rng)
    return [dataclasses.replace(p, predicted_output_interval=i.predicted_output_interval)
            for p, i in zip(points, intervals)]


def _azure(n=600, rate_scale=2.0):
    reqs, _ = build_workload("azure-conv", num_requests=n, rate_scale=rate_scale)
    return reqs


@pytest.mark.parametrize("name", ["vllm", "sarathi", "mcsf", "sjf", "gsa"])
def test_one_replica_cluster_equals_simulate(name):
    reqs = _azure()
    cost = COST_MODELS.create("llama2-7b-a100")
    factory = SCHEDULERS.get(name).factory
    single = simulate(reqs, factory(), cost, capacity_tokens=12_000)
    cluster = simulate_cluster(reqs, factory, cost, capacity_tokens=12_000, router="least-outstanding")
    assert steps_frame(single)["num_steps"].max() > 1  # fast-forward is exercised
    assert requests_frame(single).equals(cluster_requests_frame(cluster).drop(columns="replica"))
    assert steps_frame(single).equals(cluster_steps_frame(cluster).drop(columns="replica"))
    assert set(cluster_requests_frame(cluster)["replica"]) == {0}


def test_one_replica_cli_files_equal_simulate(tmp_path):
    common = ["simulate", "--trace", "azure-conv", "--num-requests", "300", "--capacity", "8000", "--no-progress",
              "--format", "csv", "--scheduler", "sarathi"]
    assert main([*common, "--output", str(tmp_path / "one")]) == 0
    assert main([*common, "--output", str(tmp_path / "cl"), "--replicas", "1", "--router", "least-kv"]) == 0
    for table in ("requests", "steps"):
        one, cl = load_table(tmp_path / "one", table), load_table(tmp_path / "cl", table)
        assert one.equals(cl.drop(columns="replica")), table
        assert one.to_csv(index=False) == cl.drop(columns="replica").to_csv(index=False)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    cl = json.loads((tmp_path / "cl" / "summary.json").read_text())
    for key, value in one.items():
        if key not in ("bound_total_latency_s", "ratio_to_bound"):  # the cluster's bound pools its KV; same here
            assert cl[key] == value, key
    assert cl["num_replicas"] == 1 and cl["load_imbalance"] == 1.0 and cl["jain_index"] == 1.0


@pytest.mark.parametrize("router", ["round-robin", "random"])
def test_stateless_routers_equal_independent_replicas(router):
    """A replica advanced only at its own arrivals is `simulate` on its share of the trace."""
    reqs = _azure(800, 6.0)
    factory = SCHEDULERS.get("vllm").factory
    cluster = simulate_cluster(reqs, factory, COST_MODELS.create("llama2-7b-a100"), capacity_tokens=12_000,
                               num_replicas=3, router=router, seed=4)
    shares = np.bincount(list(cluster.replica_of.values()), minlength=3)
    assert shares.min() > 0
    if router == "round-robin":
        order = sorted(reqs, key=lambda r: (r.arrival_time, r.request_id))
        assert [cluster.replica_of[r.request_id] for r in order] == [k % 3 for k in range(len(order))]
    for i in range(3):
        sub = [r for r in reqs if cluster.replica_of[r.request_id] == i]
        alone = simulate(sub, factory(), COST_MODELS.create("llama2-7b-a100"), capacity_tokens=12_000)
        assert requests_frame(alone).equals(requests_frame(cluster.replica_runs[i]))
        assert steps_frame(alone).equals(steps_frame(cluster.replica_runs[i]))


@pytest.mark.parametrize("router", ["random", "least-outstanding"])
def test_packed_merge_equals_the_object_merge(router):
    """The merged run reads through the replicas' packed tables; it holds what merging them
    into lists of Requests and of step values would (requests in replica order), and the
    requests handed to the replicas uncopied are left as they were."""
    from kvsched.loop import Run
    from kvsched.metrics import load_stats, summarize

    reqs = _azure(500, 6.0)
    def values(rs):  # Request compares by identity
        return [tuple(getattr(r, f.name) for f in dataclasses.fields(r)) for r in rs]

    before = values(reqs)
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=8000, num_replicas=3,
                            router=router, seed=3)
    assert values(reqs) == before
    runs = crun.replica_runs
    objects = [r for run in runs for r in run.requests]
    steps = {col: [v for run in runs for v in run.steps[col]] for col in runs[0].steps}
    steps["replica"] = [i for i, run in enumerate(runs) for _ in range(len(run.steps["step"]))]
    merged = Run(objects, steps, runs[0].capacity_tokens, runs[0].block_size, runs[0].num_blocks,
                 max(run.end_time for run in runs))
    packed = crun.run.requests
    assert values(packed) == values(objects) and len(packed) == len(objects) == len(reqs)
    assert values([packed[0], packed[-1], *packed[100:300:7]]) == values([objects[0], objects[-1],
                                                                         *objects[100:300:7]])
    assert {crun.replica_of[r.request_id] for r in packed[:len(runs[0].requests)]} == {0}
    with pytest.raises(IndexError):
        packed[len(objects)]
    assert requests_frame(crun.run).equals(requests_frame(merged))
    assert steps_frame(crun.run).equals(steps_frame(merged))
    assert cluster_steps_frame(crun).equals(steps_frame(merged))
    assert list(crun.run.steps) == list(steps) and crun.run.steps["duration"] == steps["duration"]
    assert summarize(crun.run) == summarize(merged)
    assert load_stats(crun.run) == load_stats(merged)
    assert (packed.column("replica") == [crun.replica_of[r.request_id] for r in objects]).all()


def test_packed_merge_skips_a_slot_grown_for_the_next_arrival():
    """A replica's table grows while the placeholder for the next global arrival sits in its
    inputs (cluster/replica.py), so its arrays may hold a slot past its last request; the
    merged columns hold the requests alone."""
    from kvsched.metrics import summarize
    from kvsched.request_table import _RECORD

    reqs = _requests([(0.0, 50, 5), (0.0, 50, 5), (100.0, 50, 5)])
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=8000, num_replicas=2,
                            router="least-outstanding")
    packed = crun.run.requests
    assert any(len(t._records) // _RECORD.size > len(t) for t in packed._tables)  # the case this test is about
    for name in ("request_id", "status", "finish_time", "num_preemptions", "reject_reason", "replica"):
        assert len(packed.column(name)) == len(packed) == 3, name
    assert summarize(crun.run)["num_completed"] == 3
    assert sorted(packed.column("request_id")) == [0, 1, 2]


@pytest.mark.parametrize("name", ["round-robin", "random"])
def test_routing_first_equals_routing_at_each_arrival(name):
    """A router that reads no state lets the coordinator route everything and then run the
    replicas one after the other; advancing them event by event gives the same run."""
    from kvsched.cluster.routers import BlindView

    reqs = _azure(500, 6.0)
    blind = ROUTERS.create(name)
    eager = ROUTERS.create(name)
    eager.reads_state = True  # the coordinator then advances replicas at every event
    runs = [simulate_cluster(reqs, SCHEDULERS.get("sarathi").factory, COST, capacity_tokens=8000, num_replicas=3,
                             router=rt, seed=2) for rt in (blind, eager)]
    assert runs[0].replica_of == runs[1].replica_of
    assert cluster_requests_frame(runs[0]).equals(cluster_requests_frame(runs[1]))
    assert cluster_steps_frame(runs[0]).equals(cluster_steps_frame(runs[1]))
    with pytest.raises(RuntimeError, match="reads_state"):
        BlindView(2).replica(0)


@pytest.mark.parametrize("router", ["random", "power-of-two", "least-outstanding", "prefix-affinity"])
def test_same_seed_same_bytes(router, tmp_path):
    reqs = _azure(400, 8.0)

    def csv(seed):
        c = simulate_cluster(reqs, SCHEDULERS.get("sarathi").factory, COST, capacity_tokens=6000, num_replicas=4,
                             router=router, seed=seed)
        return (cluster_requests_frame(c).to_csv(index=False) + cluster_steps_frame(c).to_csv(index=False),
                [c.replica_of[r.request_id] for r in reqs])

    (a, route_a), (b, _), (_, route_c) = csv(1), csv(1), csv(2)
    assert a == b
    if router in ("random", "power-of-two"):
        assert route_a != route_c  # the seed drives the router's generator


def _check_cluster(crun, capacity, block_size, capacities=None):
    """One replica's invariants on every replica, and the routing consistent with the tables."""
    num_blocks = capacity // block_size
    for r in crun.run.requests:
        if r.status is RequestStatus.FINISHED:
            assert r.arrival_time <= r.first_token_time <= r.finish_time
        else:
            assert r.status is RequestStatus.REJECTED and r.reject_reason
    for i, run in enumerate(crun.replica_runs):
        cap = (capacities or {}).get(i, num_blocks)
        assert max(run.steps["kv_used_blocks"], default=0) <= cap
        for r in run.requests:
            assert r.status in (RequestStatus.FINISHED, RequestStatus.REJECTED)
    routed = {rid for rid, i in crun.replica_of.items()}
    assert routed == {r.request_id for r in crun.run.requests}
    frame = cluster_requests_frame(crun)
    assert list(frame["replica"]) == [crun.replica_of[int(i)] for i in frame["request_id"]]


workloads = st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.integers(1, 60), st.integers(1, 30)),
                     min_size=1, max_size=16)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=workloads, num_replicas=st.integers(1, 4), router=st.sampled_from(sorted(ROUTERS.names())),
       block_size=st.sampled_from([1, 4, 16]))
def test_every_scheduler_in_every_replica(specs, num_replicas, router, block_size):
    reqs = _requests(specs)
    for name in SCHEDULERS.names():
        try:
            crun = simulate_cluster(reqs, lambda name=name: create_scheduler(name, reqs), COST, capacity_tokens=96,
                                    block_size=block_size, num_replicas=num_replicas, router=router, seed=3,
                                    check_oracle=True, max_steps=50_000)
        except InfeasibleSchedule:
            assert name == "alpha-protection"  # its own rule may declare a run infeasible
            continue
        _check_cluster(crun, 96, block_size)
        fits = [r for r in reqs if blocks_for(r.peak_kv_len, block_size) <= 96 // block_size]
        assert sum(r.status is RequestStatus.FINISHED for r in crun.run.requests) == len(fits), name


def test_least_outstanding_spreads_a_burst():
    reqs = [Request(i, 0.0, 50, 200) for i in range(40)]
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=100_000, num_replicas=4,
                            router="least-outstanding")
    assert list(np.bincount(list(crun.replica_of.values()))) == [10, 10, 10, 10]
    s = cluster_summary(crun)
    assert s["request_imbalance"] == 1.0
    assert s["jain_index"] == pytest.approx(1.0)


def test_vllm_dp_weighs_waiting_four_times_running():
    # Replica 0 runs a long prompt and has C waiting behind it (fcfs-static admits only what
    # fits): 4 x 1 + 1 = 5. Replica 1 runs four small requests: 4. vLLM's balancer sends G to
    # replica 1; least-outstanding (2 against 4) sends it to replica 0.
    reqs = [Request(0, 0.0, 2000, 400), Request(1, 0.0, 50, 400), Request(2, 0.5, 50, 400),
            Request(3, 0.6, 50, 400), Request(4, 0.7, 50, 400), Request(5, 0.8, 50, 400), Request(6, 0.9, 50, 400)]

    def routes(router):
        crun = simulate_cluster(reqs, lambda: SCHEDULERS.create("fcfs-static"), COST, capacity_tokens=2600,
                                num_replicas=2, router=router)
        return [crun.replica_of[i] for i in range(7)]

    assert routes("vllm-dp") == [0, 1, 0, 1, 1, 1, 1]
    assert routes("least-outstanding")[6] == 0


def test_power_of_two_with_two_replicas_balances_a_burst_random_does_not():
    reqs = [Request(i, 0.0, 50, 200) for i in range(41)]

    def counts(router):
        crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=100_000, num_replicas=2,
                                router=router, seed=5)
        return sorted(np.bincount(list(crun.replica_of.values()), minlength=2))

    assert counts("power-of-two") == [20, 21]  # both replicas are sampled: always the less loaded
    assert counts("random") != [20, 21]


def test_shortest_token_queue_counts_prompt_tokens():
    # At t = 0 nothing has run: replica 0 queues 3,000 prompt tokens, so the small ones go to 1.
    reqs = [Request(0, 0.0, 3000, 5)] + [Request(i, 0.0, 10, 5) for i in range(1, 4)]
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=10_000, num_replicas=2,
                            router="shortest-token-queue")
    assert [crun.replica_of[i] for i in range(4)] == [0, 1, 1, 1]


def test_kv_bytes_per_token_of_presets():
    from kvsched.cluster import kv_bytes_per_token

    assert kv_bytes_per_token("llama2-7b-a100") == 2 * 32 * 32 * 128 * 2  # MHA, fp16
    assert kv_bytes_per_token("qwen3-32b-rtxpro6000-tp2") == 2 * 64 * 8 * 128 * 2  # whole replica, not a rank
    assert kv_bytes_per_token("unit") is None


def test_least_kv_avoids_the_replica_holding_kv():
    # A long request fills replica 0's KV; short ones arriving later go elsewhere while it runs.
    reqs = [Request(0, 0.0, 4000, 400)] + [Request(i, 1.0 + 0.01 * i, 10, 5) for i in range(1, 7)]
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=100_000, num_replicas=2,
                            router="least-kv")
    assert crun.replica_of[0] == 0
    assert all(crun.replica_of[i] == 1 for i in range(1, 7))


def test_prefix_affinity_keeps_a_prefix_on_one_replica():
    # Two conversations (prefix ids 1.. and 2..), interleaved; affinity keeps each on its replica.
    reqs = [Request(i, 0.5 * i, 64, 4, prefix_block_ids=(1 + i % 2, 10 + i % 2), prefix_block_size=16)
            for i in range(12)]
    crun = simulate_cluster(reqs, lambda: SCHEDULERS.create("vllm", enable_prefix_caching=True), COST,
                            capacity_tokens=10_000, num_replicas=3, router="prefix-affinity")
    by_conv = {c: {crun.replica_of[r.request_id] for r in reqs if r.request_id % 2 == c} for c in (0, 1)}
    assert all(len(v) == 1 for v in by_conv.values()) and by_conv[0] != by_conv[1]
    s = cluster_summary(crun)
    # Every turn after its conversation's first finds the 32 shared tokens (2 ids of 16) of its 64.
    assert s["prefix_hit_rate"] == pytest.approx(10 * 32 / (12 * 64))
    rr = cluster_summary(simulate_cluster(reqs, lambda: SCHEDULERS.create("vllm", enable_prefix_caching=True), COST,
                                          capacity_tokens=10_000, num_replicas=3, router="round-robin"))
    assert s["prefix_hit_rate"] > rr["prefix_hit_rate"]


def test_prefix_affinity_ignores_a_shared_system_prompt_alone():
    # Every request starts with the same block (a system prompt, id 7) and then its own: the
    # one-block match is below min_match, so requests spread by load instead of piling up.
    reqs = [Request(i, 0.0, 96, 50, prefix_block_ids=(7, 100 + i, 200 + i), prefix_block_size=32)
            for i in range(12)]

    def counts(**opts):
        crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=10_000, num_replicas=3,
                                router="prefix-affinity", router_options={"max_load_gap": 100, **opts})
        return sorted(np.bincount(list(crun.replica_of.values()), minlength=3))

    assert counts() == [4, 4, 4]  # 1 of 3 blocks < the default min_match 0.5
    assert counts(min_match=0.0) == [0, 0, 12]  # any match counts: all follow the system prompt


def test_imbalance_numbers():
    assert imbalance([1, 1, 1, 1]) == (1.0, 1.0)
    load, jain = imbalance([4, 0, 0, 0])
    assert load == 4.0 and jain == pytest.approx(0.25)
    assert imbalance([0, 0]) == (1.0, 1.0)


def test_router_registry_and_options():
    assert {"round-robin", "random", "least-outstanding", "least-kv", "shortest-token-queue", "power-of-two",
            "prefix-affinity", "vllm-dp"} <= set(ROUTERS.names())
    with pytest.raises(KeyError, match="did you mean 'round-robin'"):
        ROUTERS.get("round-robbin")
    assert ROUTERS.check_options("prefix-affinity", {"max_load_gap": "3"}) == {"max_load_gap": 3}


# --- prefill/decode disaggregation -----------------------------------------------------------
def test_disaggregated_handover():
    reqs = _azure(300, 4.0)
    dis = Disaggregation(2, 3, kv_link_gbps=25.0, kv_bytes_per_token=524_288, decode_capacity_tokens=20_000)
    crun = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST_MODELS.create("llama2-7b-a100"),
                            capacity_tokens=12_000, router="least-outstanding", disaggregation=dis)
    assert crun.roles == ("prefill",) * 2 + ("decode",) * 3
    _check_cluster(crun, 12_000, 16, capacities={i: 20_000 // 16 for i in (2, 3, 4)})
    by_id = {r.request_id: r for r in crun.run.requests}
    decode_reqs = {r.request_id: r for run in crun.replica_runs[2:] for r in run.requests}
    for r in reqs:
        m = by_id[r.request_id]
        assert m.status is RequestStatus.FINISHED
        assert 0 <= crun.replica_of[r.request_id] < 2
        if r.output_len == 1:
            assert r.request_id not in crun.decode_replica_of
            continue
        x = crun.transfer_time[r.request_id]
        assert x == pytest.approx(r.prompt_len * 524_288 * 8 / 25e9)
        assert 2 <= crun.decode_replica_of[r.request_id] < 5
        d = decode_reqs[r.request_id]
        # The prefill replica's first token is the request's; the decode copy arrives after the transfer.
        assert d.arrival_time == pytest.approx(m.first_token_time + x)
        assert m.finish_time == d.finish_time >= d.arrival_time
    for run in crun.replica_runs[:2]:  # a prefill replica computes prompts and emits one token each
        assert all(q.output_len == 1 for q in run.requests)
    s = cluster_summary(crun)
    assert s["num_prefill_replicas"] == 2 and s["num_decode_replicas"] == 3
    assert s["kv_transfer_time_mean_s"] > 0
    frame = cluster_requests_frame(crun)
    assert set(frame["decode_replica"]) <= {-1, 2, 3, 4}


def test_disaggregated_with_prefix_caching():
    # Two conversations sharing prefixes: the prefill pool caches them, the decode pool takes copies.
    reqs = [Request(i, 0.2 * i, 64, 6, prefix_block_ids=(1 + i % 2, 10 + i % 2), prefix_block_size=16)
            for i in range(12)]
    crun = simulate_cluster(reqs, lambda: SCHEDULERS.create("vllm", enable_prefix_caching=True), COST,
                            capacity_tokens=4000, router="prefix-affinity",
                            disaggregation=Disaggregation(2, 2, 10.0, 1000))
    s = cluster_summary(crun)
    assert s["num_completed"] == 12 and s["prefix_hit_rate"] > 0.3


def test_slower_link_delays_only_decode():
    reqs = _azure(200, 2.0)

    def run(gbps):
        return cluster_summary(simulate_cluster(
            reqs, SCHEDULERS.get("vllm").factory, COST_MODELS.create("llama2-7b-a100"), capacity_tokens=12_000,
            disaggregation=Disaggregation(1, 2, gbps, 524_288)))

    fast, slow = run(400.0), run(1.0)
    assert fast["ttft_mean"] == slow["ttft_mean"]  # the first token is the prefill replica's
    assert slow["e2e_mean"] > fast["e2e_mean"] + 0.05


@pytest.mark.parametrize("name", sorted(DECODE_CAPABLE))
def test_decode_capable_schedulers(name):
    reqs = _requests([(0.1 * k, 20 + k, 5 + k % 7) for k in range(20)])
    crun = simulate_cluster(reqs, lambda: create_scheduler(name, reqs), COST, capacity_tokens=160, block_size=4,
                            router="least-kv", disaggregation=Disaggregation(2, 2, 1.0, 1000), check_oracle=True,
                            max_steps=50_000)
    assert all(r.status is RequestStatus.FINISHED for r in crun.run.requests)


def test_scheduler_that_cannot_decode_is_refused_in_one_line():
    reqs = _requests([(0.1 * k, 20 + k, 5) for k in range(5)])
    with pytest.raises(SchedulingError, match="decode replica: .*docs/cluster.md"):
        simulate_cluster(reqs, lambda: SCHEDULERS.create("sarathi"), COST, capacity_tokens=160,
                         disaggregation=Disaggregation(1, 1, 1.0, 1000))


# --- command line ------------------------------------------------------------------------------
def test_cli_cluster_json_is_pure_json():
    proc = subprocess.run(
        [sys.executable, "-m", "kvsched.cli", "simulate", "--trace", "synthetic:n=40,rate=20,prompt=64,output=16",
         "--replicas", "3", "--router", "power-of-two", "--json", "--no-progress"],
        capture_output=True, text=True, check=True)
    s = json.loads(proc.stdout)
    assert s["num_replicas"] == 3 and s["router"] == "power-of-two" and s["num_completed"] == 40
    assert [r["replica"] for r in s["replicas"]] == [0, 1, 2]
    assert sum(r["num_requests"] for r in s["replicas"]) == 40


def test_cli_disaggregated(tmp_path, capsys):
    out = tmp_path / "pd"
    assert main(["simulate", "--trace", "synthetic:n=30,rate=10,prompt=256,output=16", "--prefill-replicas", "1",
                 "--decode-replicas", "2", "--kv-link-gbps", "50", "--router", "least-kv", "--no-progress",
                 "--output", str(out), "--format", "csv"]) == 0
    reqs = load_table(out, "requests")
    assert set(reqs["replica"]) == {0} and set(reqs["decode_replica"]) <= {1, 2}
    assert reqs["kv_transfer_time"].iloc[0] == pytest.approx(256 * 524_288 * 8 / 50e9)
    config = json.loads((out / "config.json").read_text())
    assert config["cluster"]["disaggregation"]["kv_link_gbps"] == 50
    assert "per replica" in capsys.readouterr().out


@pytest.mark.parametrize(("flags", "message"), [
    (["--kv-link-gbps", "10"], "--kv-link-gbps needs --prefill-replicas and --decode-replicas"),
    (["--prefill-replicas", "1"], "needs both --prefill-replicas and --decode-replicas"),
    (["--replicas", "3", "--prefill-replicas", "1", "--decode-replicas", "1"], "--replicas 3 but"),
    (["--replicas", "2", "--router", "least-busy"], "unknown router 'least-busy'"),
    (["--replicas", "2", "--router", "prefix-affinity", "--router-opt", "gap=1"], "has no option 'gap'"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--cost-model", "unit"], "--kv-bytes-per-token"),
    (["--prefill-replicas", "1", "--decode-replicas", "1", "--scheduler", "sarathi"], "decode replica"),
])
def test_cli_cluster_errors_are_one_line(flags, message, capsys):
    assert main(["simulate", "--trace", "synthetic:n=5,rate=10,prompt=32,output=4", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# --- sweeps and capacity planning ---------------------------------------------------------------
SPEC = "synthetic:n=200,prompt=uniform(32,256),output=uniform(8,96)"


def _grid(**more):
    from kvsched.experiments.sweep import Grid

    return Grid.from_dict({"schedulers": ["vllm"], "workload": {"trace": SPEC}, "capacities": [2048], **more})


def test_grid_cluster_axes_and_one_replica_cells_unchanged(tmp_path):
    from kvsched.experiments.sweep import GridError, run_cell, run_sweep, task_id

    plain = _grid(rates=[8.0])
    assert all("replicas" not in c for c in plain.cells())  # old grids keep their cell ids
    grid = _grid(rates=[8.0], replicas=[1, 3], routers=["round-robin", "least-kv"])
    cells = grid.cells()
    assert [(c["replicas"], c["router"]) for c in cells] == [(1, "round-robin"), (1, "least-kv"),
                                                             (3, "round-robin"), (3, "least-kv")]
    assert task_id(cells[0]) != task_id(plain.cells()[0])
    # A 1-replica cell gives the numbers of the plain cell (the cluster adds only its own keys).
    one, plain_summary = run_cell(cells[0], save_runs=False), run_cell(plain.cells()[0], save_runs=False)
    for key in ("num_completed", "e2e_mean", "ttft_p99", "num_preemptions", "peak_kv_tokens", "num_steps"):
        assert one[key] == plain_summary[key], key
    table, outcome = run_sweep(grid, tmp_path)
    assert not outcome.failed
    assert list(zip(table["replicas"], table["router"])) == [(1, "round-robin"), (1, "least-kv"), (3, "round-robin"),
                                                             (3, "least-kv")]
    assert (table["load_imbalance"] >= 1).all() and table["e2e_mean"].iloc[2] < table["e2e_mean"].iloc[0]
    with pytest.raises(GridError, match="unknown router 'fastest'"):
        _grid(replicas=[2], routers=["fastest"])
    with pytest.raises(GridError, match="replicas must be >= 1"):
        _grid(replicas=[0])


def test_grid_prefill_decode_axis(tmp_path):
    from kvsched.experiments.sweep import GridError, run_sweep

    grid = _grid(rates=[16.0], prefill_decode=["1:2", "2:2"], kv_link_gbps=[100, 1], routers=["least-kv"])
    assert [(c["prefill_replicas"], c["decode_replicas"], c["kv_link_gbps"], c["replicas"]) for c in grid.cells()] == [
        (1, 2, 100.0, 3), (1, 2, 1.0, 3), (2, 2, 100.0, 4), (2, 2, 1.0, 4)]
    table, outcome = run_sweep(grid, tmp_path, save_runs=False)
    assert not outcome.failed
    assert (table["num_kv_transfers"] > 0).all() and (table["num_completed"] == 200).all()
    # The same split with a slower link: the same TTFT (prefill), a longer transfer.
    assert table["ttft_mean"].iloc[0] == table["ttft_mean"].iloc[1]
    assert table["kv_transfer_time_mean_s"].iloc[1] == pytest.approx(100 * table["kv_transfer_time_mean_s"].iloc[0])
    with pytest.raises(GridError, match="not P:D"):
        _grid(prefill_decode=["3"])
    with pytest.raises(GridError, match="replicas or prefill_decode"):
        _grid(prefill_decode=["1:1"], replicas=[2])
    with pytest.raises(GridError, match="kv_link_gbps needs prefill_decode"):
        _grid(kv_link_gbps=[10])


def test_grid_router_refresh_axis(tmp_path):
    """`router_refresh_s` is an axis of cluster cells: 0 is the live cell (same numbers as a
    grid without the key, whose cells keep their ids), a number is simulate_cluster's refresh."""
    from kvsched.experiments.sweep import GridError, run_sweep, task_id

    live = _grid(rates=[16.0], replicas=[3], routers=["least-outstanding"])
    grid = _grid(rates=[16.0], replicas=[3], routers=["least-outstanding"], router_refresh_s=[0, 2.0])
    cells = grid.cells()
    assert "router_refresh_s" not in live.cells()[0]
    assert [c["router_refresh_s"] for c in cells] == [0.0, 2.0]
    assert task_id(cells[0]) != task_id(live.cells()[0])
    table, outcome = run_sweep(grid, tmp_path, save_runs=False)
    assert not outcome.failed
    base, _ = run_sweep(live, tmp_path / "live", save_runs=False)
    assert list(table["router_refresh_s"]) == [0.0, 2.0]
    assert list(table["router_label"]) == ["vllm / least-outstanding", "vllm / least-outstanding@2s"]
    for key in ("e2e_mean", "ttft_p99", "num_steps", "request_imbalance"):
        assert table[key].iloc[0] == base[key].iloc[0], key
    # The stale cell is simulate_cluster with that refresh; at 2 s it routes differently from live.
    reqs = build_workload(**grid.cells()[1]["workload"], target_rate=16.0)[0]
    stale = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST_MODELS.create("llama2-7b-a100"),
                             capacity_tokens=cells[1]["capacity_tokens"], num_replicas=3, router="least-outstanding",
                             router_refresh_s=2.0)
    assert table["e2e_mean"].iloc[1] == cluster_summary(stale)["e2e_mean"]
    assert table["request_imbalance"].iloc[1] != table["request_imbalance"].iloc[0]
    with pytest.raises(GridError, match="router_refresh_s needs a cluster"):
        _grid(router_refresh_s=[0.1])
    with pytest.raises(GridError, match="router_refresh_s must be finite numbers >= 0"):
        _grid(replicas=[2], router_refresh_s=[-1])


def test_fewest_replicas_is_the_boundary(tmp_path):
    from kvsched.experiments.capacity import Criterion, run_fewest
    from kvsched.experiments.sweep import run_cell

    grid = _grid(rates=[24.0], routers=["round-robin", "least-outstanding"])
    crit = Criterion("slo", "e2e_p99", 2.5)
    table, probes = run_fewest(grid, crit, tmp_path, max_replicas=16)
    assert list(table["router"]) == ["round-robin", "least-outstanding"] and set(table["limit"]) == {"found"}
    for row in table.itertuples():
        n = int(row.fewest_replicas)
        assert n > 1  # the load is more than one replica can serve within the SLO
        cell = {**grid.cells()[0], "router": row.router, "rate": 24.0, "seed": 0}
        assert run_cell({**cell, "replicas": n}, save_runs=False)["e2e_p99"] <= 2.5
        assert run_cell({**cell, "replicas": n - 1}, save_runs=False)["e2e_p99"] > 2.5
        mine = probes[probes["search_id"] == row.search_id]
        assert set(mine["replicas"]) >= {n, n - 1}
    assert (tmp_path / "fewest.parquet").is_file()
    with pytest.raises(ValueError, match="needs rates"):
        run_fewest(_grid(), crit, tmp_path / "x")


def test_capacity_search_fewest_replicas_cli(tmp_path, capsys):
    assert main(["capacity-search", "--fewest-replicas", "--schedulers", "vllm", "--trace", SPEC, "--capacities",
                 "2048", "--rates", "24", "--slo", "2.5", "--routers", "power-of-two", "--max-replicas", "8",
                 "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fewest replicas" in out and "power-of-two" in out
    assert main(["capacity-search", "--fewest-replicas", "--schedulers", "vllm", "--trace", SPEC, "--rates", "24",
                 "--slo", "2.5", "--replicas", "2", "--output", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "drop --replicas" in capsys.readouterr().err


def test_router_refresh_reads_published_state():
    """With a refresh interval the router reads state published at ticks plus its own routing:
    a long interval makes least-outstanding count only what it sent (round-robin-like), and
    a tiny one reads what the live router reads."""
    reqs = _azure(500, 6.0)
    factory = SCHEDULERS.get("vllm").factory
    cost = COST_MODELS.create("llama2-7b-a100")

    def run(refresh):
        return simulate_cluster(reqs, factory, cost, capacity_tokens=12_000, num_replicas=4,
                                router="least-outstanding", router_refresh_s=refresh)

    live, tiny, never = run(None), run(1e-7), run(1e9)
    order = sorted(reqs, key=lambda r: (r.arrival_time, r.request_id))
    # Never refreshed after t = 0: every replica looks empty but for what was sent to it.
    assert np.bincount(list(never.replica_of.values())).tolist() == [125] * 4
    assert [never.replica_of[r.request_id] for r in order][:8] == [0, 1, 2, 3, 0, 1, 2, 3]
    agree = np.mean([live.replica_of[r.request_id] == tiny.replica_of[r.request_id] for r in reqs])
    assert agree > 0.9  # the tick snaps a replica to the tick before the arrival, not the arrival
    # Fewer stops of fast-forwarded decode runs than the live router's.
    assert len(run(0.5).run.steps["step"]) < len(live.run.steps["step"])
    _check_cluster(run(0.5), 12_000, 16)
    with pytest.raises(ValueError, match="refresh_s"):
        run(0.0)


@pytest.mark.parametrize("router", ["least-outstanding", "least-kv"])
def test_fast_forward_keeps_the_routing_and_the_schedule(router):
    """Fast-forwarded decode runs stop at every arrival a router reads, so the router sees the
    same step boundaries as when every step is simulated: same routing, same times (up to the
    summation order of step durations)."""
    reqs = _azure(300, 6.0)
    runs = [simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST_MODELS.create("llama2-7b-a100"),
                             capacity_tokens=12_000, num_replicas=3, router=router, fast_forward=ff)
            for ff in (True, False)]
    assert runs[0].replica_of == runs[1].replica_of
    fast, slow = (cluster_requests_frame(c) for c in runs)
    assert np.allclose(fast["finish_time"], slow["finish_time"], rtol=1e-9, atol=1e-9)
    assert len(runs[0].run.steps["step"]) < len(runs[1].run.steps["step"])


def test_a_router_instance_is_not_shared_between_pools():
    from kvsched.cluster.routers import RoundRobin

    reqs = [Request(i, 0.1 * i, 20, 4) for i in range(8)]
    by_name = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=1000,
                               router="round-robin", disaggregation=Disaggregation(2, 2, 10.0, 1000))
    by_instance = simulate_cluster(reqs, SCHEDULERS.get("vllm").factory, COST, capacity_tokens=1000,
                                   router=RoundRobin(), disaggregation=Disaggregation(2, 2, 10.0, 1000))
    assert by_name.replica_of == by_instance.replica_of
    assert by_name.decode_replica_of == by_instance.decode_replica_of


def test_report_of_a_cluster_sweep_plots_latency_against_replicas(tmp_path):
    from kvsched.experiments.sweep import run_sweep
    from kvsched.report import render_report

    grid = _grid(rates=[8.0], replicas=[1, 2], routers=["round-robin", "least-kv"], seeds=[0, 1])
    _, outcome = run_sweep(grid, tmp_path / "sweep", save_runs=False)
    assert not outcome.failed
    md = render_report(tmp_path / "sweep", tmp_path / "r.md", fmt="md").read_text()
    assert "### Latency vs replicas" in md
    png = re.search(r"!\[[^\]]*\]\(([^)]*replicas[^)]*\.png)\)", md)
    assert png and (tmp_path / png.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
