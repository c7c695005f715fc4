"""The IB-like auxiliary driver (`xec ib serve`) and the verbs its applications use."""

from .verbs import ALL_ACCESS, LOCAL_ONLY, IbContext, MemoryRegion, QueuePair

__all__ = ["ALL_ACCESS", "LOCAL_ONLY", "IbContext", "MemoryRegion", "QueuePair"]
