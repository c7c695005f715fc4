"""Device and daemon configuration: built-in defaults, overridden by a TOML file.

A bad file is the operator's mistake, reported as ConfigError; `xed serve` exits with
EX_CONFIG (78) so systemd's RestartPreventExitStatus can stop a restart loop.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

from protocols.cli import EX_CONFIG as EX_CONFIG  # re-exported: its home was here
from protocols.constants import PAGE_SIZE

MiB = 1 << 20
# the host page sizes a device may emulate: x86-64's, and the 64 KiB of arm64 and
# ppc64le kernels built so (where the PCI barrier page is refused)
HOST_PAGE_SIZES = (PAGE_SIZE, 64 << 10)
GiB = 1 << 30


class ConfigError(Exception):
    pass


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value <= 0:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{attribute.name} must be a non-negative integer, got {value!r}")


@attrs.frozen(kw_only=True)
class EngineConfig:
    """Engine instances per class (DRM_XE_ENGINE_CLASS_*), all on GT 0."""

    render: int = attrs.field(default=1, validator=_non_negative)
    copy: int = attrs.field(default=1, validator=_non_negative)
    video_decode: int = attrs.field(default=1, validator=_non_negative)
    video_enhance: int = attrs.field(default=0, validator=_non_negative)
    compute: int = attrs.field(default=2, validator=_non_negative)


@attrs.frozen(kw_only=True)
class DeviceConfig:
    name: str = "xed-emulated-xe"
    device_id: int = attrs.field(default=0xE20B, validator=_non_negative)
    revision: int = attrs.field(default=0, validator=_non_negative)
    vram_size: int = attrs.field(default=4 * GiB, validator=_non_negative)
    visible_vram_size: int = attrs.field(default=256 * MiB, validator=_non_negative)
    system_memory: int = attrs.field(default=8 * GiB, validator=_positive)
    va_bits: int = attrs.field(default=48, validator=_positive)
    # the host page size the device's rules follow (GEM_CREATE sizes, VM_BIND and mmap
    # alignment, min_page_size); memfds and mappings stay the real host's 4 KiB pages
    page_size: int = attrs.field(default=PAGE_SIZE, validator=_positive)
    # BAR0 doorbell pages; the last one is the PCI barrier page, the rest go one per file
    doorbell_pages: int = attrs.field(default=64, validator=_positive)
    # how long a job of a VM not in LR mode may run before its queue is banned (xe's
    # job_timeout_ms); a batch looping on itself (a spinner) meets it
    job_timeout_ms: int = attrs.field(default=5000, validator=_positive)
    engines: EngineConfig = attrs.field(factory=EngineConfig)

    def __attrs_post_init__(self) -> None:
        if self.page_size not in HOST_PAGE_SIZES:
            raise ConfigError(f"page_size must be one of {', '.join(map(str, HOST_PAGE_SIZES))}")
        if self.visible_vram_size > self.vram_size:
            raise ConfigError("visible_vram_size cannot exceed vram_size")
        if self.doorbell_pages < 2:
            raise ConfigError("doorbell_pages must be at least 2 (one is the barrier page)")
        if not 32 <= self.va_bits <= 57:
            raise ConfigError("va_bits must be between 32 and 57")
        for name in ("vram_size", "visible_vram_size", "system_memory"):
            if getattr(self, name) % self.page_size:
                raise ConfigError(f"{name} must be a multiple of page_size ({self.page_size})")


def _one_of(*choices: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ConfigError(f"{attribute.name} must be one of {', '.join(choices)}")

    return check


def _boolean(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not bool:
        raise ConfigError(f"{attribute.name} must be true or false, got {value!r}")


@attrs.frozen(kw_only=True)
class DmaBufConfig:
    """How imported buffers may be reached by the CPU (see README: dma-buf sharing)."""

    # mmap of a foreign import through the importer's GEM offset (user space should
    # mmap the dma-buf and bracket access with DMA_BUF_IOCTL_SYNC):
    # "xe": as xe (TTM) does, the offset and the mmap succeed, the first access SIGBUS;
    # "refuse": GEM_MMAP_OFFSET is ENODEV, as i915 answers;
    # "forward": map the exporter's pages, as the i915 RFC proposed
    imported_mmap: str = attrs.field(default="xe", validator=_one_of("xe", "refuse", "forward"))
    # report device access to a buffer while a CPU write window is open on it
    strict_sync: bool = attrs.field(default=False, validator=_boolean)


def _ids(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not tuple or any(type(v) is not int or v < 0 for v in value):
        raise ConfigError(f"{attribute.name} must be a list of numeric ids")


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


@attrs.frozen(kw_only=True)
class AuxConfig:
    """Who may connect as an auxiliary driver (role aux): root and the daemon's own uid
    always, and these uids and groups."""

    allowed_uids: tuple[int, ...] = attrs.field(default=(), converter=_to_tuple, validator=_ids)
    allowed_gids: tuple[int, ...] = attrs.field(default=(), converter=_to_tuple, validator=_ids)


@attrs.frozen(kw_only=True)
class DebuggerConfig:
    # false: DEBUG_VM_ACCESS refuses userptr ranges (EINVAL), for those who see reading
    # another process's host memory through the GPU as a side channel
    userptr_access: bool = attrs.field(default=True, validator=_boolean)


@attrs.frozen(kw_only=True)
class AdminConfig:
    """Who may connect with role admin (`xed ctl`): root and the daemon's own uid
    always, and these uids and groups (a group such as `xed-admin`)."""

    allowed_uids: tuple[int, ...] = attrs.field(default=(), converter=_to_tuple, validator=_ids)
    allowed_gids: tuple[int, ...] = attrs.field(default=(), converter=_to_tuple, validator=_ids)


# the most connections_per_uid 0 means: about 1 GiB of the daemon at ~15 KiB a connection
DEFAULT_CONNECTIONS_PER_UID = 65536


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """What one client (one connection: the drm_file) may hold at once, what one uid may
    make the daemon hold over all its connections, and the headroom the daemon keeps for
    everyone else. A client that reaches one of its limits gets ENOMEM and nobody else
    notices; the daemon short of descriptors answers EMFILE where the call hands one
    back, as do the per-uid descriptor limits. The defaults lie far above what a real
    driver's user holds (xed/device/limits.py)."""

    # GEM handles. Mesa holds thousands (BO caches, suballocation keep it there); a
    # process cannot map more than vm.max_map_count (65530) BOs anyway
    bos: int = attrs.field(default=65536, validator=_positive)
    # ANV and iris use one or a few per device or context; IGT xe_exec_basic many-vm: 16
    vms: int = attrs.field(default=1024, validator=_positive)
    # tens per process in Mesa and compute runtimes; IGT xe_create create-contexts
    # makes 4096 in one file, create-execqueues-*-shared 2048
    exec_queues: int = attrs.field(default=16384, validator=_positive)
    # what one uid's files make the daemon hold together, whatever their number: GEM
    # handles, VMs, exec queues, GPU mappings, syncobjs, jobs not done and queued bind
    # ops, each one. Every per-file limit above bounds one connection; this bounds the
    # uid, whose connections would otherwise multiply them (about 200 MB a connection
    # at every default limit) until the daemon runs out of memory. About 0.25-1.2 KiB
    # of the daemon each: at most about a GiB for one uid
    objects_per_uid: int = attrs.field(default=1048576, validator=_positive)
    # GPU mappings (VMAs) over all the file's VMs: each costs the daemon about 250 bytes,
    # and one client binding 4 KiB pieces made 80,000 a second with no end but the
    # daemon's memory. Sparse residency (DXVK, vkd3d) keeps tens of thousands; 262144
    # is 64 MiB of the daemon, and a 16 GiB sparse resource bound in 64 KiB tiles
    vmas: int = attrs.field(default=262144, validator=_positive)
    fence_waits: int = attrs.field(default=1024, validator=_positive)  # at once
    # syncobj handles; and timeline points the file added that the daemon still holds
    # (each keeps the points before it: a chain a client must not grow without end).
    # Vulkan drivers keep one syncobj per semaphore and fence, a point per submission
    syncobjs: int = attrs.field(default=65536, validator=_positive)
    timeline_points: int = attrs.field(default=16384, validator=_positive)
    # dma-bufs and VM exports the client created that are still alive, wherever their
    # descriptors went (a swapchain or a video pipeline exports tens)
    exported: int = attrs.field(default=4096, validator=_positive)
    # descriptors in replies the client has not read yet; and for all connections of
    # one uid together (the kernel caps descriptors in flight per sending user)
    unread_descriptors: int = attrs.field(default=1024, validator=_positive)
    unread_descriptors_per_uid: int = attrs.field(default=8192, validator=_positive)
    # daemon-wide: descriptors kept free so that new connections and the admin role are
    # served while clients sit at the limit
    descriptor_reserve: int = attrs.field(default=256, validator=_positive)
    # connections one uid may have open at once, whatever their role (channels count
    # too): each costs the daemon a descriptor of the table every uid shares, and costs
    # the uid nothing. Past it a new connection is answered EMFILE and closed, as the
    # kernel's per-user instance limits answer (inotify's max_user_instances). 0: three
    # quarters of what the daemon may open (RLIMIT_NOFILE at start, less
    # descriptor_reserve), so that one uid never takes the whole table, and at most
    # DEFAULT_CONNECTIONS_PER_UID: a connection costs the daemon about 15 KiB, and three
    # quarters of systemd's LimitNOFILE=524288 would be 5.6 GiB for one uid
    connections_per_uid: int = attrs.field(default=0, validator=_non_negative)
    # blocking requests with a descriptor attached (a dma-buf op asking another daemon,
    # up to PEER_TIMEOUT) under way at once over all connections of one uid. Each holds
    # the descriptor it lent, a copy of one the client may send again and again, and
    # peer_call holds one more meanwhile: without a cap one uid parks as many as it has
    # connections, and takes the table every other uid's GEM_CREATE, MMAP and accept()
    # need. Past it the request is refused at once with EMFILE, the errno of a
    # descriptor table with no room: the kernel never holds a process's descriptors for
    # it, so the process must not make xed hold more
    lent_descriptors_per_uid: int = attrs.field(default=64, validator=_positive)

    def for_table(self, nofile: int) -> LimitsConfig:
        """These limits in a daemon that may open `nofile` descriptors (its RLIMIT_NOFILE
        soft limit at start; never infinite, the kernel caps it at fs.nr_open):
        connections_per_uid 0 becomes three quarters of what descriptor_reserve leaves,
        at least 1 and at most DEFAULT_CONNECTIONS_PER_UID."""
        if self.connections_per_uid:
            return self
        share = (nofile - self.descriptor_reserve) * 3 // 4
        share = max(1, min(share, DEFAULT_CONNECTIONS_PER_UID))
        return attrs.evolve(self, connections_per_uid=share)


@attrs.frozen(kw_only=True)
class Config:
    device: DeviceConfig = attrs.field(factory=DeviceConfig)
    dma_buf: DmaBufConfig = attrs.field(factory=DmaBufConfig)
    aux: AuxConfig = attrs.field(factory=AuxConfig)
    admin: AdminConfig = attrs.field(factory=AdminConfig)
    debugger: DebuggerConfig = attrs.field(factory=DebuggerConfig)
    limits: LimitsConfig = attrs.field(factory=LimitsConfig)


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = attrs.fields_dict(cls)
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown setting {where}.{key}".replace(" .", " "))
    kwargs = {}
    for key, value in table.items():
        nested = known[key].type
        if isinstance(nested, str) and nested in _SECTIONS:
            value = _build(globals()[nested], value, f"{where}.{key}".lstrip("."))
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}] {exc}" if where else str(exc)) from exc


def load(path: Path | None) -> Config:
    """Defaults when `path` is None; otherwise the file's settings over the defaults."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    config: Config = _build(Config, data, "")
    return config


_SECTIONS = {
    "EngineConfig",
    "DeviceConfig",
    "DmaBufConfig",
    "AuxConfig",
    "AdminConfig",
    "DebuggerConfig",
    "LimitsConfig",
}
