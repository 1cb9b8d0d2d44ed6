"""Shared state (replay cache, rate-limit counters) behind one interface; memory now, Redis later."""

from gateway.state.base import StateBackend, StateUnavailable
from gateway.state.memory import MemoryState

__all__ = ["MemoryState", "StateBackend", "StateUnavailable"]
