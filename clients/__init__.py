"""Everything on the client side of the socket: the library and the client programs."""

from .batch import Batch
from .device import Device, user_fence
from .errors import DaemonGone, NotCpuVisible, XeError
from .mapping import Mapping

__all__ = ["Batch", "DaemonGone", "Device", "Mapping", "NotCpuVisible", "XeError", "user_fence"]
