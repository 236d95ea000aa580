"""The kvsched vLLM plugin: supported policies inside vLLM's real Scheduler (CPU harness),
refusals, option errors and predictions from SamplingParams.extra_args."""

import json
import random

import pytest

pytest.importorskip("vllm")

from kvsched.vllm.config import PluginConfigError, PolicyConfig, plugin_env
from kvsched.vllm.harness import Arrival, Driver, build_scheduler, tiny_model_dir
from kvsched.vllm.plugin import KvschedAsyncScheduler, KvschedScheduler

POLICIES = ["vllm", "sjf", "srpt", "fcfs-static", "mcsf", "mc-benchmark", "a-max", "a-min",
            "alpha-protection", "beta-clearing"]
KNOBS = {"num_blocks": 13, "block_size": 16, "max_num_seqs": 6, "max_num_batched_tokens": 64}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def stream(seed, n=14):
    rng = random.Random(seed)
    return [Arrival(rng.randrange(0, 8), rng.randrange(1, 90), rng.randrange(1, 60),
                    {"predicted_output_len": rng.randrange(1, 60)}) for _ in range(n)]


@pytest.mark.parametrize("name", POLICIES)
def test_policy_inside_vllm_finishes_everything_within_blocks(model_dir, name, tmp_path):
    log = tmp_path / "steps.jsonl"
    options = {"predictor": "predicted"} if name in ("sjf", "srpt", "mcsf", "mc-benchmark") else {}
    if name == "alpha-protection":
        # Its default (clearing="none") declares an overflow infeasible and raises, inside
        # vLLM as in the simulator; with LIFO clearing it runs any stream.
        options = {"alpha": 0.2, "clearing": "lifo"}
    config = PolicyConfig(name, options, step_log=str(log), strict=True)
    for seed in range(3):
        items = stream(seed)
        driver = Driver(build_scheduler(model_dir, KvschedScheduler, kvsched_config=config, **KNOBS))
        driver.run(items)  # checks free + held == usable and max_num_seqs after every step
        assert driver.finished == set(range(len(items)))
        assert driver.scheduler.num_mismatches == 0
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows and set(rows[0]) == {"step", "scheduled", "preempted", "finished", "free_blocks"}


def test_async_scheduler_class_builds_and_runs(model_dir):
    config = PolicyConfig("mcsf", {}, strict=True)
    driver = Driver(build_scheduler(model_dir, KvschedAsyncScheduler, kvsched_config=config, **KNOBS))
    driver.add(20, 3)
    driver.step()
    assert driver.records[0].scheduled == {0: 20}


@pytest.mark.parametrize("name", ["wait", "gsa", "sarathi", "nested-wait", "wait-cp"])
def test_unsupported_policy_refused_at_construction(model_dir, name):
    with pytest.raises(PluginConfigError, match=f"{name}.*cannot run inside vLLM: .+"):
        build_scheduler(model_dir, KvschedScheduler, kvsched_config=PolicyConfig(name), **KNOBS)


def test_restart_preemption_refused():
    with pytest.raises(PluginConfigError, match="preemption='restart'"):
        PolicyConfig("mcsf", {"preemption": "restart"}).check()


def test_bad_options_one_line_naming_the_option(monkeypatch, model_dir):
    monkeypatch.setenv("KVSCHED_SCHEDULER", "mcsf")
    monkeypatch.setenv("KVSCHED_OPTIONS", json.dumps({"reserv": 0.1}))
    with pytest.raises(PluginConfigError) as info:
        build_scheduler(model_dir, KvschedScheduler, **KNOBS)
    assert "\n" not in str(info.value) and "'reserv'" in str(info.value) and "reserve" in str(info.value)
    monkeypatch.setenv("KVSCHED_OPTIONS", json.dumps({"reserve": "lots"}))
    with pytest.raises(PluginConfigError, match="option reserve wants a number"):
        PolicyConfig.from_env()
    monkeypatch.setenv("KVSCHED_OPTIONS", "{not json")
    with pytest.raises(PluginConfigError, match="KVSCHED_OPTIONS is not valid JSON"):
        PolicyConfig.from_env()


def test_plugin_env_round_trip(monkeypatch):
    env = plugin_env("a-max", {"reserve": 0.1}, step_log="/tmp/x.jsonl")
    assert env == {"KVSCHED_SCHEDULER": "a-max", "KVSCHED_OPTIONS": '{"reserve": 0.1}',
                   "KVSCHED_STEP_LOG": "/tmp/x.jsonl"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = PolicyConfig.from_env()
    assert (config.scheduler, dict(config.options), config.step_log) == ("a-max", {"reserve": 0.1}, "/tmp/x.jsonl")
    with pytest.raises(PluginConfigError):
        plugin_env("gsa")


def test_predictions_reach_the_kvsched_request(model_dir):
    s = build_scheduler(model_dir, KvschedScheduler, kvsched_config=PolicyConfig("a-max"), **KNOBS)
    d = Driver(s)
    d.add(10, 50, {"predicted_output_len": 12})
    d.add(10, 50, {"predicted_output_interval": [5, 20]})
    d.add(10, 50)
    r0, r1, r2 = (s.kvsched_request(f"r{i}") for i in range(3))
    assert (r0.predicted_output_len, r0.predicted_output_interval) == (12, (1, 50))
    assert (r1.predicted_output_len, r1.predicted_output_interval) == (50, (5, 20))
    assert (r2.predicted_output_len, r2.predicted_output_interval, r2.output_len) == (50, (1, 50), 50)


@pytest.mark.parametrize("name", POLICIES)
def test_policy_clipped_to_vllm_limits_still_finishes_everything(model_dir, name):
    # A token budget of 16 and 3 seats: policies that do not take vLLM's knobs decide more
    # than vLLM can run, so the plugin clips their admissions. Whatever the policy then
    # believes (e.g. that a clipped admission holds KV and can be preempted), vLLM's state
    # stays consistent and every request finishes.
    options = {"alpha": 0.2, "clearing": "lifo"} if name == "alpha-protection" else {}
    knobs = {**KNOBS, "max_num_seqs": 3, "max_num_batched_tokens": 16}
    for seed in range(12):
        items = stream(100 + seed, n=18)
        scheduler = build_scheduler(model_dir, KvschedScheduler, kvsched_config=PolicyConfig(name, options), **knobs)
        driver = Driver(scheduler)
        driver.run(items)
        assert driver.finished == set(range(len(items))), (name, seed)
