"""The one place allowed to call :func:`asyncio.create_task`.

The event loop keeps only weak references to tasks, so a task nobody holds may
be garbage-collected mid-flight. Long-lived owners keep their tasks in a set
created here and cancel them when they close; short-lived work uses a
:class:`asyncio.TaskGroup` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar


__all__ = ["TaskSet"]

T = TypeVar("T")


class TaskSet:
    """Named tasks with strong references, cancelled together by :meth:`cancel_all`."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Start ``coro`` as a task this set owns until it finishes."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them to finish; idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
