"""Shared state (replay set, rate-limit cells) behind one interface: memory or Redis."""

from gateway.config.model import State
from gateway.state.base import Decision, StateBackend, StateUnavailable
from gateway.state.memory import MemoryState


def create_state(settings: State) -> StateBackend:
    """The configured backend; nothing else in the gateway names a backend class."""
    if settings.backend == "redis":
        from gateway.state.redis import RedisState

        return RedisState(settings.redis)
    return MemoryState(settings.max_replay_entries)


__all__ = ["Decision", "MemoryState", "StateBackend", "StateUnavailable", "create_state"]
