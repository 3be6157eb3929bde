"""Multi-turn rollouts with tools: the model writes, calls tools, reads their results, and writes on.

    turn 1: every rollout's prompt -> the sampler (one batched call)
    while some rollouts made tool calls (at most tools.max_turns rounds):
        run their calls (concurrently; grpo_cli/tools/runner.py)
        render the results with the chat template and append them, as tokens, to the rollout
        continue every such rollout -> the sampler (one batched call)

A rollout is one completion: prompt | turn 1 | tool result | turn 2 | ..., token after token as the
sampler saw them. The tool results are appended by token concatenation (prompt + completion +
suffix, never a re-tokenized conversation), so the learner scores exactly the tokens the sampler
conditioned on. `tool_mask` marks the tool's tokens: the learner never trains on them. A rollout
ends at a turn without a tool call, after `tools.max_turns` rounds, at the completion budget
(`sampler.max_tokens`, for all turns together) or when a tool result would overflow the budget or
`sampler.max_model_len` (the result is then dropped, as in TRL).

Seeds: turn 1 of completion j of prompt i draws with seeds[i] + j (as a single-turn rollout does),
turn t with `turn_seed(seeds[i] + j, t)`: the same samples whatever the batch and request order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grpo_cli.errors import UserError
from grpo_cli.rollout.generation import Generation, SingleTurn
from grpo_cli.rollout.prompts import PromptBatch, PromptFormatter
from grpo_cli.rollout.sampler import Rollouts, Sampler, ToolUse, turn_seed
from grpo_cli.tools.parsers import ParsedTurn
from grpo_cli.tools.registry import Toolbox
from grpo_cli.tools.runner import ToolRunner


@dataclass
class Trajectory:
    """One rollout being written."""

    prompt: list[int]
    seed: int | None
    tools: dict
    env: object = None
    ids: list[int] = field(default_factory=list)  # every completion token so far (turns and tool results)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 on sampled tokens, 0 on tool tokens
    text: str = ""
    finish: str = "stop"
    messages: list[dict] = field(default_factory=list)
    turns: int = 0
    used: bool = False
    last: ParsedTurn | None = None  # the latest assistant turn, read

    def add_turn(self, ids: list[int], logprobs: list[float], text: str, finish: str, parsed: ParsedTurn) -> None:
        self.ids += ids
        self.logprobs += logprobs
        self.mask += [1] * len(ids)
        self.text += text
        self.finish, self.last, self.turns = finish, parsed, self.turns + 1
        self.messages.append(parsed.message())

    @property
    def calls(self) -> bool:
        """It asked for tools and stopped by itself (a turn cut at max_tokens is not run)."""
        return bool(self.last and self.last.calls) and self.finish == "stop"


class ToolSuffix:
    """The tokens that follow an assistant turn when tool results come back (TRL's method): the chat
    template renders a dummy [user, assistant with tool calls] and the same plus the tool messages
    (opening the next assistant turn); the suffix is what the second adds after the first, cut at
    the token that ended the assistant's turn."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, tool_messages: list[dict], ended_with: int | None) -> list[int]:
        call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
        dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
        prefix = self._ids(dummy, add_generation_prompt=False)
        full = self._ids(dummy + tool_messages, add_generation_prompt=True)
        ends = [i for i, t in enumerate(prefix) if t in (ended_with, self.tokenizer.eos_token_id)]
        if ends:  # templates write e.g. "<|im_end|>\n": the sampled turn ended at the end-of-turn token
            prefix = prefix[: ends[-1] + 1]
        if full[: len(prefix)] != prefix:
            raise UserError("the chat template of model.path does not render tool results after an assistant turn "
                            "without changing the turn itself (not prefix-preserving): it cannot be used with tools")
        return full[len(prefix):]

    def _ids(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


class ToolLoop:
    """A Generation (grpo_cli/rollout/generation.py) with tool calls between turns."""

    def __init__(self, cfg, toolbox: Toolbox, sampler: Sampler, fmt: PromptFormatter, tokenizer, max_tokens: int,
                 max_model_len: int):
        """`cfg`: the `tools` section; `max_tokens`: the completion budget of all turns together."""
        from hydra.utils import instantiate

        self.toolbox, self.sampler, self.fmt, self.tokenizer = toolbox, sampler, fmt, tokenizer
        self.max_turns, self.max_tokens, self.max_model_len = cfg.max_turns, max_tokens, max_model_len
        self.parser = instantiate(cfg.parser)
        self.runner = ToolRunner(cfg.timeout_s, cfg.max_workers)
        self.suffix = ToolSuffix(tokenizer)

    def __call__(self, batch: PromptBatch, n: int, seeds: list[int] | None = None, temperature: float | None = None,
                 max_tokens: int | None = None) -> Rollouts:
        budget = max_tokens or self.max_tokens
        trajs = self._start(batch, n, seeds)
        use = ToolUse(turns=[], used=[])
        version = self._first_turn(trajs, batch, n, seeds, temperature, budget)
        live = [t for t in trajs if t.calls]
        for turn in range(1, self.max_turns + 1):
            live = self._run_tools(live, budget, use)
            if not live:
                break
            self._next_turn(live, turn, temperature, budget)
            live = [t for t in live if t.calls]
        use.turns, use.used = [t.turns for t in trajs], [t.used for t in trajs]
        envs = [t.env for t in trajs] if self.toolbox.environment else None
        return Rollouts([t.prompt for t in trajs], [t.ids for t in trajs], [t.text for t in trajs],
                        [t.finish for t in trajs], [t.logprobs for t in trajs], version,
                        [t.mask for t in trajs], [t.messages for t in trajs], use, envs)

    def _start(self, batch: PromptBatch, n: int, seeds: list[int] | None) -> list[Trajectory]:
        """One trajectory per completion, prompt-major, each with its own tools (and environment,
        whose `reset(**row)` may add text to the user turn)."""
        prompts = self.fmt.encode(batch.prompts)
        trajs = []
        for i, prompt in enumerate(prompts):
            row = {k: v[i] for k, v in batch.columns.items()}
            for j in range(n):
                tools, env = self.toolbox.for_rollout()
                extra = env.reset(**row) if env is not None and hasattr(env, "reset") else None
                ids = self.fmt.encode([self._with(row, extra)])[0] if extra else prompt
                trajs.append(Trajectory(ids, None if seeds is None else seeds[i] + j, tools, env))
        return trajs

    def _with(self, row: dict, extra: str) -> str:
        """The row's prompt with an environment's text appended to the last user turn."""
        messages = self.fmt.messages(row)
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last] = {**messages[last], "content": f"{messages[last]['content']}{extra}"}
        return self.fmt.render(messages)

    def _first_turn(self, trajs, batch, n, seeds, temperature, budget) -> int:
        """Turn 1 of every trajectory; returns the weight version that sampled it."""
        if all(t.prompt is trajs[i - i % n].prompt for i, t in enumerate(trajs)):  # a group shares its prompt
            prompts = [trajs[i * n].prompt for i in range(len(batch.prompts))]
            out = self.sampler.generate(prompts, n, temperature, budget, seeds)
        else:  # environments changed some prompts: one request per rollout, the same seeds
            out = self.sampler.generate([t.prompt for t in trajs], 1, temperature, budget,
                                        None if seeds is None else [t.seed for t in trajs])
        self._append(trajs, out)
        return out.version

    def _next_turn(self, live: list[Trajectory], turn: int, temperature, budget: int) -> None:
        seeds = None if live[0].seed is None else [turn_seed(t.seed, turn) for t in live]
        out = self.sampler.generate([t.prompt + t.ids for t in live], 1, temperature,
                                    [budget - len(t.ids) for t in live], seeds)
        self._append(live, out)

    def _append(self, trajs: list[Trajectory], out: Rollouts) -> None:
        for t, ids, lp, text, finish in zip(trajs, out.completion_ids, out.logprobs, out.texts, out.finish_reasons):
            t.add_turn(ids, lp, text, finish, self.parser.parse(text))

    def _run_tools(self, live: list[Trajectory], budget: int, use: ToolUse) -> list[Trajectory]:
        """Run the calls of every live trajectory; append each one's results, unless they would
        overflow; returns the trajectories that go on to another turn."""
        results, seconds = self.runner.run([(t.tools, t.last.calls) for t in live])
        use.seconds += seconds
        going_on = []
        for t, calls in zip(live, results):
            t.used = True
            for c in calls:
                use.calls[c.name] = use.calls.get(c.name, 0) + 1
                use.failures[c.name] = use.failures.get(c.name, 0) + c.failed
            messages = [c.message() for c in calls]
            suffix = self.suffix(messages, t.ids[-1] if t.ids else None)
            if len(t.ids) + len(suffix) >= budget or len(t.prompt) + len(t.ids) + len(suffix) >= self.max_model_len:
                use.dropped += 1  # no room for the results and an answer: the rollout ends here
                continue
            t.ids += suffix
            t.logprobs += [0.0] * len(suffix)
            t.mask += [0] * len(suffix)
            t.text += self.tokenizer.decode(suffix, skip_special_tokens=True)
            t.messages += messages
            going_on.append(t)
        return going_on

    def close(self) -> None:
        self.runner.close()


def make_generation(cfg, toolbox: Toolbox | None, sampler: Sampler, fmt: PromptFormatter, tokenizer,
                    sampler_cfg) -> Generation:
    """The run's Generation: turns with tool calls when it has tools (`cfg`: the `tools` section),
    else one turn."""
    if toolbox is None:
        return SingleTurn(sampler, fmt)
    return ToolLoop(cfg, toolbox, sampler, fmt, tokenizer, sampler_cfg.max_tokens, sampler_cfg.max_model_len)
