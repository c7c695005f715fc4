"""The IB-like auxiliary driver (`xec ib serve`) and the verbs its applications use."""

from .verbs import ALL_ACCESS, IbContext, MemoryRegion, QueuePair

__all__ = ["ALL_ACCESS", "IbContext", "MemoryRegion", "QueuePair"]
