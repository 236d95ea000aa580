"""Greedy tokens of real vLLM on an exported folder vs kvsched's engine on the same weights.

Run in an environment with vLLM (CPU build is enough) and kvsched on the path:

    kvsched model export --output /tmp/smollm2-hf
    VLLM_CPU_KVCACHE_SPACE=1 PYTHONPATH=src python examples/vllm_greedy_check.py /tmp/smollm2-hf

Prints one line per prompt and exits 1 if any prompt's tokens differ. vLLM starts its
engine in a spawned process, hence the main guard.
"""

from __future__ import annotations

import argparse
import sys

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about memory."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Opposite of hot?"}],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a folder written by `kvsched model export`")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32", help="vLLM's dtype (float32 matches kvsched's engine)")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    from kvsched.engine.generate import greedy_generate
    from kvsched.engine.weights import load_model

    model, tokenizer = load_model(args.model_dir)
    prompt_ids = [tokenizer.encode(tokenizer.apply_chat_template(m)) for m in PROMPTS]
    ours = [greedy_generate(model, tokenizer, ids, args.max_tokens) for ids in prompt_ids]

    llm = LLM(model=args.model_dir, dtype=args.dtype, enforce_eager=True, max_model_len=1024, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params)

    ok = True
    for ids, mine, out in zip(prompt_ids, ours, outputs):
        theirs = list(out.outputs[0].token_ids)
        same = theirs == mine
        # Greedy ties or float noise can flip a late token; report where they part.
        first_diff = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        ok &= same
        print(f"{'SAME' if same else 'DIFF'} prompt={len(ids)} tokens kvsched={len(mine)} vllm={len(theirs)} "
              f"first_diff={'-' if same else first_diff}: {tokenizer.decode(mine, skip_special_tokens=True)!r}")
        if not same:
            print(f"     vllm: {tokenizer.decode(theirs, skip_special_tokens=True)!r}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
