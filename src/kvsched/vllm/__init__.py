"""kvsched schedulers inside real vLLM v1 (issue 16).

Importing this package does not import vLLM: `config` (the policy configuration read
from the environment) is vLLM-free; `plugin` (the scheduler classes, usable as
`--scheduler-cls kvsched.vllm.plugin.KvschedScheduler`) and `harness` (vLLM's real
Scheduler on a fake KV configuration, driven step by step on the CPU) import vLLM.
See docs/vllm.md.
"""

from kvsched.vllm.config import (
    ENV_OPTIONS,
    ENV_SCHEDULER,
    ENV_STEP_LOG,
    PolicyConfig,
    plugin_env,
)

__all__ = ["ENV_OPTIONS", "ENV_SCHEDULER", "ENV_STEP_LOG", "PolicyConfig", "plugin_env"]
