"""Which asyncio event loop the long-running processes run on (setting ``event_loop``).

uvloop (libuv, written in C) does the same work as the standard loop with less Python per wake-up: the
gRPC server and the stream worker are event-loop bound, so it shows directly in CPU per call and per
batch (README "Performance"). It is a dependency on Linux and macOS; ``auto`` falls back to the
standard loop where it is not installed (Windows), ``uvloop`` insists on it, ``asyncio`` turns it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from contracts.exceptions import ConfigError

T = TypeVar("T")


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for :class:`asyncio.Runner`, or None for the standard loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop: uvloop is not installed (pip install uvloop, or event_loop: auto)") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(choice: str = "auto") -> str:
    return "asyncio" if loop_factory(choice) is None else "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """``asyncio.run`` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def install_policy(choice: str = "auto") -> None:
    """For frameworks that create their own loop (faust's worker): make the chosen loop the default."""
    if loop_factory(choice) is not None:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the current process actually runs on (banners, /healthz)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
