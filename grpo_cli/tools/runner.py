"""Running the tool calls of a turn: every trajectory's calls at once, each with a time limit, every
failure a message for the model rather than a crashed run.

A call that raises, runs past `tools.timeout_s`, returns something that cannot be printed, gets
arguments its tool does not take, or names no known tool becomes a tool message
`{"error": "..."}` (TRL's form) and is counted in `tools/<name>/failures`. A call that timed out
keeps its thread until it returns (Python cannot stop a thread): a tool that may hang should
enforce its own limit, as the sandboxed python tool does with a process.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from grpo_cli.tools.parsers import ToolCall


@dataclass
class CallResult:
    name: str
    content: str  # what the model reads
    failed: bool

    def message(self) -> dict:
        return {"role": "tool", "name": self.name, "content": self.content}


def call_tool(fn: Callable, arguments: dict):
    """One call, sync or async (an async tool runs in an event loop of this thread)."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):
        return asyncio.run(fn(**arguments))
    return fn(**arguments)


def _printed(result) -> str:
    return result if isinstance(result, str) else str(result)


class ToolRunner:
    """Runs calls on a thread pool: the calls of one trajectory in order (an environment's state
    follows them), different trajectories concurrently."""

    def __init__(self, timeout_s: float, max_workers: int):
        self.timeout_s = timeout_s
        self.pool = ThreadPoolExecutor(max_workers, thread_name_prefix="tools")

    def run(self, work: list[tuple[dict[str, Callable], list[ToolCall]]]) -> tuple[list[list[CallResult]], float]:
        """`work`: per trajectory, its tools (name -> callable) and the calls of its turn. Returns
        the results of each trajectory's calls, in order, and the wall seconds it took."""
        t0 = time.perf_counter()
        results: list[list[CallResult]] = [[] for _ in work]
        for k in range(max((len(calls) for _, calls in work), default=0)):  # the k-th call of every trajectory
            running = {i: self._submit(tools, calls[k]) for i, (tools, calls) in enumerate(work) if k < len(calls)}
            deadline = time.monotonic() + self.timeout_s
            for i, (name, future) in running.items():
                results[i].append(self._collect(name, future, deadline))
        return results, time.perf_counter() - t0

    def _submit(self, tools: dict[str, Callable], call: ToolCall) -> tuple[str, Future | CallResult]:
        if call.error is not None:
            return call.name, CallResult(call.name, _error(call.error), True)
        if call.name not in tools:
            known = ", ".join(sorted(tools)) or "none"
            return call.name, CallResult(call.name, _error(f"unknown tool {call.name!r}; the tools are: {known}"), True)
        fn = tools[call.name]
        return call.name, self.pool.submit(lambda: _printed(call_tool(fn, call.arguments)))

    def _collect(self, name: str, future: Future | CallResult, deadline: float) -> CallResult:
        if isinstance(future, CallResult):
            return future
        try:
            return CallResult(name, future.result(timeout=max(deadline - time.monotonic(), 0.0)), False)
        except FutureTimeout:
            return CallResult(name, _error(f"{name} timed out after {self.timeout_s:g} s"), True)
        except TypeError as err:  # mostly arguments the tool does not take
            return CallResult(name, _error(f"{name}: {err}"), True)
        except Exception as err:  # noqa: BLE001  any failure of the tool is the model's to read
            return CallResult(name, _error(f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"), True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _error(message: str) -> str:
    return str({"error": message})
