"""The typed config schema: one dataclass per config group, the one place every default lives.

Each group of `conf/` (model, data, reward, sampler, optim, algo, logger) merges onto one of these,
so Hydra/OmegaConf reject unknown keys and wrong types; every field has its docstring right under
it. Range checks that types cannot say live in `grpo_cli.config.validate.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from grpo_cli.errors import ConfigError


@dataclass
class LoraSettings:
    r: int = 0
    """LoRA rank; 0 = no adapters (full fine-tuning). The sampler always gets the merged weights."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    """Module names that get adapters (peft's `target_modules`)."""


@dataclass
class ModelConfig:
    path: str = MISSING
    """Hub model id (e.g. `Qwen/Qwen2.5-0.5B-Instruct`) or a local directory from `save_pretrained`."""
    tokenizer: str | None = None
    """Tokenizer id or directory; None uses `path`."""
    dtype: str = "bfloat16"
    """Weights dtype of learner, reference and sampler: float32, bfloat16 or float16."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation for the learner (sdpa, eager, flash_attention_2)."""
    trust_remote_code: bool = False
    """Allow model code from the hub to run. Off unless you trust the repository."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (peft): `model.lora.r=16` trains adapters only; r=0 trains every weight."""


@dataclass
class DataConfig:
    path: str = MISSING
    """Hub dataset id (e.g. `openai/gsm8k`) or a local .jsonl/.json/.parquet/.csv file."""
    name: str | None = None
    """Hub dataset config name (e.g. `main` for gsm8k); ignored for local files."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: str | None = None
    """Split used for evaluation (of `eval_path` when that is a hub dataset, else of `path`); None evaluates on nothing.
    For a local file, an `eval_path` or a held-out slice."""
    eval_path: str | None = None
    """Evaluation data: a local file, or a different hub dataset (e.g. `HuggingFaceH4/MATH-500`, its `eval_split`);
    None holds out `eval_holdout` rows of a local `path`, or uses `eval_split` of a hub `path`."""
    eval_holdout: int = 0
    """Rows held out of a local training file for evaluation when no `eval_path` is given."""
    prompt_column: str = "prompt"
    """Column holding the prompt text; every other column is passed to the rewards by name."""
    prompt_template: str = "{prompt}"
    """Python format string for the user message; `{prompt}` is the prompt column's text, `{name}` any other column."""
    system_prompt: str | None = None
    """Optional system message (used only with a chat template)."""
    use_chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template when it has one (plain text otherwise)."""
    shuffle: bool = True
    """Shuffle training rows every epoch with the run seed."""


@dataclass
class RewardSpec:
    fn: Any = MISSING
    """A dotted path to a callable, or a `_target_` node that instantiates one."""
    weight: float = 1.0
    """Weight of this reward in the total; every reward is also logged on its own."""


def reward_spec(name: str, entry: Any) -> RewardSpec:
    """One `reward.funcs` entry checked against RewardSpec (an open dict there, so the CLI can add rewards)."""
    try:
        if isinstance(entry, DictConfig):  # resolve `${sampler.max_tokens}` etc. against the whole config
            entry = OmegaConf.to_container(entry, resolve=True)
        spec = OmegaConf.merge(OmegaConf.structured(RewardSpec), entry)
        _ = spec.fn  # mandatory
    except Exception as err:
        msg = str(err).splitlines()[0]
        raise ConfigError(f"reward.funcs.{name}={entry!r} is invalid: {msg}; allowed keys: fn, weight") from None
    return spec


@dataclass
class RewardConfig:
    funcs: dict[str, Any] = field(default_factory=dict)
    """Named rewards, each `{fn: ..., weight: 1.0}`. `fn` is a dotted path to a callable
    `fn(prompts, completions, **columns) -> list[float | None]` (None = not applicable), or a
    `_target_` node that instantiates one; see RewardSpec. Add one from the command line with
    `+reward.funcs.NAME.fn=my.module.fn`."""
    accuracy: str | None = None
    """Reward whose value 1.0 counts as correct for `eval/accuracy` and pass@k; None uses the first reward."""
    max_failures_in_a_row: int = 3
    """A reward that raises gets None for that call (counted in `reward/NAME/errors`); after this many
    failed calls in a row the run stops with a checkpoint. 0 never stops."""


@dataclass
class SamplerConfig:
    dtype: str = "${model.dtype}"
    """vLLM weights dtype; follows the learner by default so the two agree."""
    max_model_len: int = 2048
    """Longest prompt + completion the engine accepts."""
    gpu_memory_utilization: float = 0.3
    """Share of GPU memory vLLM may take; the learner colocated on the same GPU needs the rest."""
    tensor_parallel_size: int = 1
    """GPUs the engine shards the model over: the server sampler only (sampler=vllm-server with as many
    sampler.devices); the colocated engine runs unsharded, one per learner rank."""
    enforce_eager: bool = False
    """Disable CUDA graphs / torch.compile in vLLM (faster start, slower decode)."""
    seed: int = "${seed}"  # type: ignore[assignment]
    """Engine seed (the engine's own generator; rollouts are seeded per request, see `reproducible`)."""
    reproducible: bool = True
    """Seed every request from (seed, step, global prompt index), so a run's samples do not depend on
    the engine's state, the sampler kind, the rank count, resumes or request order (docs/resume.md).
    false: requests draw from the engine's generator (only the colocated engine's single process
    stays reproducible then, and it is no faster on the measured workload)."""
    temperature: float = 1.0
    """Sampling temperature for training rollouts."""
    top_p: float = 1.0
    """Nucleus sampling mass for training rollouts."""
    top_k: int = 0
    """Top-k for training rollouts; 0 disables."""
    max_tokens: int = 256
    """Maximum completion length in tokens."""
    stop: list[str] = field(default_factory=list)
    """Stop strings; the completion ends before them (finish reason `stop`)."""
    engine_kwargs: dict[str, Any] = field(default_factory=lambda: {"use_tqdm_on_load": False})
    """Extra keyword arguments for `vllm.LLM` (e.g. `max_num_seqs`, `swap_space`); merged onto this
    default, which keeps vLLM's checkpoint-loading progress bar off the console."""
    sleep_level: int = 0
    """vLLM sleep mode between rollout and learning (CUDA only): 0 off; 2 (recommended) frees the
    engine's weights and KV cache while the learner runs (the learner pushes every weight after
    waking anyway); 1 also frees both but first copies the weights to host memory and back every
    step, only for the push to overwrite them."""
    kind: str = "colocated"
    """colocated: an in-process vLLM engine beside the learner (sampler=vllm, vllm-cpu); server: a
    `vllm serve` process on its own devices, over HTTP (sampler=vllm-server, vllm-server-cpu)."""
    url: str = ""
    """server: base URL of a running vLLM server started with VLLM_SERVER_DEV_MODE=1 (e.g.
    http://10.0.0.5:8000); empty starts one on loopback for the run and stops it at the end."""
    server_args: list[str] = field(default_factory=list)
    """server: extra `vllm serve` arguments for a server grpo-cli starts (e.g. [--max-num-seqs, "256"])."""
    devices: str | None = None
    """server: CUDA_VISIBLE_DEVICES of a server grpo-cli starts (e.g. "1" while the learner uses GPU 0); null
    inherits. A server on the learner's GPU is refused unless gpu_memory_utilization <= 0.5 leaves the learner room."""
    startup_timeout_s: float = 600.0
    """server: seconds a server grpo-cli starts may take to answer before the run fails."""
    request_timeout_s: float = 600.0
    """server: an HTTP call (a batch of rollouts, a weight update) slower than this fails the run with a checkpoint, never a hang."""
    weight_sync: str = "auto"
    """server: how weights reach it: nccl (vLLM's NCCL weight transfer, GPU), shm (safetensors in
    /dev/shm reloaded in place by the server, CPU or any host sharing the learner's RAM), auto (nccl
    when the learner is on CUDA (train.device), else shm). Weights travel in sampler.dtype, the server's."""
    weight_sync_address: str = ""
    """server, nccl: the learner host's address the server's workers connect to for the weight
    transfer; empty: loopback for a server on loopback, else this host's routable address (vLLM's get_ip())."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate."""
    optimizer: dict[str, Any] = field(default_factory=lambda: {"_target_": "torch.optim.AdamW"})
    """Any torch.optim class by `_target_` plus its arguments (conf/optim/*.yaml); `params` and `lr` are passed for you."""
    scheduler: str = "constant_with_warmup"
    """Schedule name for `transformers.get_scheduler` (constant_with_warmup, linear, cosine, ...)."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""


@dataclass
class AlgoConfig:
    group_size: int = 8
    """G: completions sampled per prompt; advantages are normalised within each group."""
    beta: float = 0.04
    """Weight of the KL penalty to the frozen reference (its form: `kl`); 0 loads no reference model."""
    epsilon: float = 0.2
    """Lower clip: the ratio is clipped below at 1 - epsilon."""
    epsilon_high: float | None = None
    """Upper clip: ratio clipped above at 1 + epsilon_high; None uses `epsilon` (DAPO's clip-higher sets e.g. 0.28)."""
    num_iterations: int = 1
    """mu: gradient passes over each batch of rollouts; > 1 computes pi_old with a no-grad forward."""
    scale_rewards: str = "group"
    """Divide the centred rewards by the std of the group (GRPO), of the whole batch (`batch`:
    PPO-Lite, arXiv 2508.08221; each rank's batch under train.nproc > 1) or not at all (`none`: Dr. GRPO)."""
    adv_eps: float = 1e-4
    """eps in (r - mean) / (std + eps)."""
    adv_std_ddof: int = 0
    """0: the population std the GRPO sources define; 1: Bessel's (n - 1), TRL's, which makes every
    advantage sqrt((n - 1) / n) times grpo-cli's (G = 8: 0.935)."""
    reward_aggregation: str = "sum_then_normalize"
    """sum_then_normalize: advantages of the weighted sum of the rewards; normalize_then_sum (GDPO,
    arXiv 2601.05242; TRL's multi_objective_aggregation): each reward normalised within its group
    first, so one reward's scale cannot drown the others, then the sum normalised over the batch."""
    aggregation: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "grpo_cli.algo.aggregation.SequenceMean"}
    )
    """How per-token losses become one number: a `_target_` from grpo_cli.algo.aggregation (or your own)."""
    objective: dict[str, Any] = field(default_factory=lambda: {
        "_target_": "grpo_cli.algo.objectives.ClippedSurrogate",
        "epsilon": "${algo.epsilon}", "epsilon_high": "${algo.epsilon_high}",
    })
    """The policy term per token: a `_target_` from grpo_cli.algo.objectives: ClippedSurrogate (GRPO),
    DualClip (+ `clip_c`, loss capped at -c*A for A < 0), GSPO (one clipped ratio per sequence),
    GSPOToken, GSPODualClip, CISPO (+ `clip_max`), SAPO (+ `temperature_pos`, `temperature_neg`) or
    VESPO (+ `k_pos`, `lambda_pos`, `k_neg`, `lambda_neg`)."""
    kl: dict[str, Any] = field(default_factory=lambda: {"_target_": "grpo_cli.algo.kl.TokenKL", "estimator": "k3"})
    """The KL penalty's form: grpo_cli.algo.kl.TokenKL (per token), RatioWeightedKL (times pi / pi_old,
    TRL's default use_bias_correction_kl) or ResponseKL (the completion's sum, charged to each of its
    tokens), with `estimator` k1, k2 or k3. Its weight is `beta`."""
    is_correction: dict[str, Any] = field(default_factory=lambda: {"_target_": "grpo_cli.algo.correction.NoCorrection"})
    """Importance weights pi_old / pi_sampler on the policy term for the sampler/learner mismatch:
    grpo_cli.algo.correction.NoCorrection, TruncatedIS or MaskedIS (`level` token|sequence, `clip_max`, `clip_min`)."""
    entropy_coef: float = 0.0
    """Entropy bonus: subtract entropy_coef * (policy entropy per token) from the loss; the entropy is logged either way."""
    entropy_aggregation: dict[str, Any] = field(default_factory=dict)
    """How the bonus's per-token entropy is weighted: {} = with the loss's `aggregation` weights (so
    the bonus and the policy term trade off token for token); `+algo.entropy_aggregation._target_=grpo_cli.algo.aggregation.TokenMean`
    = TRL's token mean, whatever the loss's aggregation."""
    entropy_target: float | None = None
    """Adaptive entropy coefficient (Skywork-OR1, arXiv 2505.22312; TRL's use_adaptive_entropy): after
    each step entropy_coef moves by entropy_coef_delta towards keeping the mean entropy at this target
    and the bonus applies only while the entropy is at or below it. null = a fixed entropy_coef."""
    entropy_coef_delta: float = 0.005
    """Step of the adaptive entropy coefficient per training step."""
    entropy_coef_min: float = 0.0
    """Lower bound of the adaptive entropy coefficient."""
    entropy_coef_max: float = 1.0
    """Upper bound of the adaptive entropy coefficient."""
    policy_masks: dict[str, Any] = field(default_factory=dict)
    """Masks of the policy term by name, each a `_target_` from grpo_cli.algo.masks (TopEntropyMask,
    OffPolicySequenceMask); add one with `+algo/policy_masks=top_entropy` (conf/algo/policy_masks)."""
    mask_truncated: bool = False
    """Leave completions that hit `sampler.max_tokens` (finish reason `length`) out of the loss (DAPO's overlong filtering)."""
    batch_filter: dict[str, Any] = field(default_factory=lambda: {"_target_": "grpo_cli.rollout.filters.KeepAll"})
    """Which scored groups are trained on: a `_target_` from grpo_cli.rollout.filters (KeepAll, SkipZeroStd, DynamicSampling)."""
    kl_limit: float | None = None
    """Mean per-token KL to the reference that `kl_action` watches (needs beta > 0); null = off."""
    kl_action: str = "warn"
    """Above kl_limit: warn (one line), stop (checkpoint, then exit naming the KL) or adapt (adaptive beta steering KL to kl_limit)."""
    kl_horizon: float = 10000.0
    """Adaptive KL controller's horizon in completions (Ziegler et al.): beta *= 1 + clip(KL/limit - 1, +-0.2) * n / horizon."""
    ref_refresh_every: int = 0
    """Every K steps the reference becomes `ref_refresh_alpha * policy + (1 - alpha) * reference`; 0 = frozen reference."""
    ref_refresh_alpha: float = 1.0
    """Mix of the refresh (TRL's ref_model_mixup_alpha); 1.0 copies the policy."""
    max_staleness: int = 0
    """Asynchronous rollouts (sampler.kind=server only): draw the next k steps' rollouts while the
    learner trains, using a rollout only if its weights are at most k steps old; pi_old is then the
    sampler's log-probs (or, with is_correction, corrected by it). 0 = on-policy, no overlap."""


@dataclass
class LoggerConfig:
    wandb_mode: str = "auto"
    """W&B mode: auto (online with credentials, else offline), online, offline or disabled."""
    project: str = "grpo-cli"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); None uses your default."""
    group: str | None = None
    """W&B group; None groups the jobs of a sweep (`grpo-train -m`) under the sweep's name."""
    tags: list[str] = field(default_factory=list)
    """W&B tags; a sweep's jobs also get their swept values (`algo.beta=0.04`)."""
    completions_every: int = 10
    """Log a table of sample completions every N steps; 0 disables."""
    completions_rows: int = 16
    """Rows in each completions table."""
    progress: bool = True
    """Show a rich progress bar on the console."""
    print_every: int = 10
    """Without the progress bar (`progress: false`, e.g. `logger=none`): one console line with the train
    reward, accuracy, KL and step time every N steps and at the last step; 0 prints none."""
    tensorboard: bool = False
    """Also write TensorBoard event files to `<run_dir>/tensorboard` (alone with `logger=tensorboard`, or beside W&B)."""
    verbose: bool = False
    """Also show engine and library logs (vLLM, transformers, W&B) on the console; they always go to `<run_dir>/train.log`."""


@dataclass
class TrainConfig:
    prompts_per_step: int = 16
    """B: prompts per step; a step trains on B * G completions."""
    micro_batch_size: int = 16
    """Completions per forward/backward; gradients accumulate over an optimiser batch's micro-batches."""
    optim_batch_size: int | None = None
    """Completions per optimiser step; None = all B * G of the step (one optimiser step per pass)."""
    max_steps: int = 100
    """Optimiser steps to run (each pass of mu counts once per step); 0 runs `epochs` instead."""
    epochs: int = 1
    """Passes over the training data when `max_steps` is 0."""
    autocast_dtype: str | None = None
    """Run the learner's matmuls under torch.autocast with this dtype (e.g. bfloat16); log-softmax, ratios and KL stay fp32."""
    device: str = "auto"
    """Where the learner (policy, reference, optimiser state, every tensor of a step) lives:
    auto (CUDA when available, else cpu), cpu, cuda or cuda:N."""
    logprob_chunk_mib: int = 256
    """lm_head + log-softmax run over chunks of tokens whose fp32 logits take at most this many MiB
    (forward and backward); the full [tokens, vocab] logits never exist."""
    max_bad_steps: int = 3
    """Optimiser steps with NaN/Inf gradients are skipped (counted in `bad_steps`); after this many in a
    row the run stops with a checkpoint. 0 never stops."""
    pack_sequences: bool = True
    """Pack each micro-batch's sequences end to end into rows (per-sequence position ids, a
    block-diagonal causal mask) so no forward/backward compute goes to padding; false pads every
    sequence to the longest (bench-cpu on CPU: learner 2.7 s -> 1.5 s per step). The padded-token
    fraction is logged as learner/pad_frac."""
    share_prompts: bool = True
    """With pack_sequences, feed each prompt once per micro-batch and let its completions (the G of a
    group that fall in the micro-batch) attend to that one copy through a tree-shaped mask: the same
    log-probs and gradients, the prompt's compute paid once instead of G times (the demo's learner
    step: 1.08 s -> 0.29 s). Rows widen (1, 2 or 4 x the longest sequence) only where the saved
    prompt tokens outweigh the wider attention."""
    compile: bool = False
    """torch.compile the policy's and reference's transformer (dynamic shapes), fusing the many
    small element-wise ops. Costs a one-off compile (~40 s on 2 CPU cores), then bench-cpu's
    learner step drops ~20 %: worth it for runs of more than a few minutes."""
    nproc: int = 1
    """Data-parallel processes: `grpo-train train.nproc=N` starts N ranks with torch's elastic
    launcher (as `torchrun --nproc-per-node N -m grpo_cli` does); each samples B / N prompts with
    its own vLLM engine and holds a full replica of the learner. Ignored inside a torchrun rank."""
    strategy: str = "ddp"
    """How ranks hold the learner (grpo_cli/parallel/sharding.py): ddp (every rank a full replica, gradients
    summed across ranks) or fsdp2 (torch's fully_shard: each decoder layer a unit, every rank holds
    1/N of the parameters, gradients and AdamW state; for models that do not fit one device)."""
    dist_timeout_s: float = 600.0
    """Timeout of every collective between ranks: when a rank dies, the others fail after at most
    this long instead of hanging (torchrun's agent usually stops them sooner)."""
    callbacks: list[str] = field(default_factory=list)
    """Dotted paths of callables `fn(event, step)` called at named points of every step (`rollout`,
    `learner`, `checkpoint`; grpo_cli/observe/callbacks.py), e.g. a watchdog or a profiler window."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate every N steps (and always before the first and after the last); 0 = before and after only."""
    max_rows: int | None = 200
    """Evaluate on at most this many rows of the eval split; None = all."""
    pass_k: int = 0
    """Also report pass@k with k samples at the training temperature; 0 disables."""
    max_tokens: int | None = None
    """Completion length for evaluation; None uses `sampler.max_tokens`."""


@dataclass
class CheckpointConfig:
    every: int = 50
    """Save a resumable checkpoint every N steps (a crash loses at most N - 1 steps; SIGINT/SIGTERM
    always save one); 0 saves only at the end."""
    final: bool = True
    """Save the final model."""
    keep_last: int = 2
    """Keep the newest N `step_*` checkpoints (plus `final`); 0 keeps all."""
    merged: bool = False
    """With LoRA (model.lora.r > 0), also save the merged model in `merged/` next to the adapter."""


@dataclass
class ToolsConfig:
    funcs: list[Any] = field(default_factory=list)
    """Tools the model may call while it generates (TRL's `tools=`): dotted paths of functions, or
    `_target_` nodes of callable objects (e.g. grpo_cli.tools.python_sandbox.PythonTool). Each one's
    schema comes from its type hints and Google-style docstring; the chat template shows them."""
    environment: str | None = None
    """Dotted path of an environment class (TRL's `environment_factory=`): one instance per rollout,
    `reset(**row)` before it (text it returns is appended to the user turn), its public methods as
    tools, and an optional `get_reward()` that becomes a reward named after the class."""
    parser: Any = field(default_factory=lambda: {"_target_": "grpo_cli.tools.parsers.QwenToolCalls"})
    """How tool calls are read from the model's text (grpo_cli/tools/parsers.py); Qwen2.5's
    `<tool_call>{json}</tool_call>` by default."""
    max_turns: int = 5
    """Rounds of tool calls per rollout (TRL's `max_tool_calling_iterations`); the completion budget
    `sampler.max_tokens` covers every turn and tool result together."""
    timeout_s: float = 30.0
    """A tool call running longer than this becomes an error message for the model."""
    max_workers: int = 16
    """Tool calls that run at once (threads), across the rollouts of a turn."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    """Multi-turn rollouts with tools (grpo_cli/tools/); none by default."""
    seed: int = 0
    """Seeds data order, the learner and the vLLM engine."""
    eval_only: bool = False
    """Only evaluate `model.path` on the eval split, no training."""
    run_name: str | None = None
    """Name of the run in W&B; None lets W&B pick one."""
    resume: str | None = None
    """Continue a run from its newest complete checkpoint: a run dir (`resume=outputs/...`, which also
    becomes this run's dir), or `auto` (continue if `hydra.run.dir` already holds a checkpoint, else
    start fresh). Only the keys `grpo-train --help` lists at its end may differ from the checkpoint's
    config (grpo_cli.state.checkpoint.RESUMABLE)."""
