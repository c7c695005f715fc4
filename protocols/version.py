"""Protocol version. A peer with another major version is refused with EPROTO."""

PROTOCOL_MAJOR = 1
# minor 1: DEVICE_QUERY GT_TOPOLOGY, UC_FW_VERSION; 2: EXEC addresses; 3: syncobj
# descriptors and sync files (SYNCOBJ_HANDLE_TO_FD, ..._SYNC_FILE); 4: sw_sync timelines;
# 5: SYNCOBJ_EVENTFD_REGISTER and _WAIT; 6: XedClientInfo.blocking; 7: PCI_BARRIER_ACKS;
# limits.vmas and objects_per_uid (XedLimits.vmas, .objects_per_uid; XedClientInfo.vmas,
# .uid_objects; XedObjectCounts.uid_objects)
PROTOCOL_MINOR = 7
PROTOCOL_VERSION = (PROTOCOL_MAJOR, PROTOCOL_MINOR)


def compatible(major: int) -> bool:
    """Minor versions only add ops and fields; a major bump changes meaning."""
    return major == PROTOCOL_MAJOR
