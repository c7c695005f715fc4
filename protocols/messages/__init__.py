"""Message records, named after the xe_drm.h structs whose fields they carry.

Each ioctl has its argument record (what user space fills in) and its result record
(the fields the kernel writes back). Field names are the kernel's, MBZ fields included,
so the daemon checks `pad`, `reserved` and `extensions` exactly as xe does. Where the C
struct has a user pointer plus a count (`syncs`/`num_syncs`, `instances`, the bind
vector), the record has a list: the count is its length.

Each family of ops has its module here; every record is reachable as
`protocols.messages.Name` (the daemon and the library write `m.Name`).
"""

from __future__ import annotations

from .admin import *  # noqa: F403
from .debug import *  # noqa: F403
from .drm import *  # noqa: F403
from .events import *  # noqa: F403
from .verbs import *  # noqa: F403
from .vm_export import *  # noqa: F403
from .xe import *  # noqa: F403

__all__ = [name for name in dir() if name[:1].isupper()]
