"""The page faults a VM's work met, and VM_GET_PROPERTY, which reports them.

xe keeps the first MAX_FAULTS_SAVED_PER_VM faults of each VM, whatever queue met them,
and hands them out through DRM_IOCTL_XE_VM_GET_PROPERTY(FAULTS): asked with size 0, the
bytes they take (48 each); asked with a size, that many. Here a fault is saved when a
batch is stopped by one (the queue is banned, exec_queue.py); a batch stopped for any
other reason (no MI_BATCH_BUFFER_END, an internal error) met no page fault.
"""

from __future__ import annotations

from errno import EINVAL, ENOENT
from typing import TYPE_CHECKING

from protocols import messages as m
from protocols.constants import (
    DRM_XE_VM_GET_PROPERTY_FAULTS,
    FAULT_ACCESS_TYPE_READ,
    FAULT_ACCESS_TYPE_WRITE,
    FAULT_LEVEL_PTE,
    XE_VM_FAULT_SIZE,
)

from .errors import GpuFault, refuse_if

if TYPE_CHECKING:
    from .file import XeFile
    from .vm import XeVm

MAX_FAULTS_SAVED_PER_VM = 50
FAULT_PAGE = 4096  # the precision xe reports


def save_fault(vm: XeVm, fault: GpuFault) -> None:
    """Keep `fault` in `vm`'s list if it was a page fault and the list has room."""
    if fault.page is None or len(vm.faults) >= MAX_FAULTS_SAVED_PER_VM:
        return
    page = fault.address & ~(FAULT_PAGE - 1) & (vm.size - 1)
    if page & vm.size >> 1:  # canonical: the top bit repeated up to bit 63
        page |= (1 << 64) - vm.size
    access = FAULT_ACCESS_TYPE_WRITE if fault.write else FAULT_ACCESS_TYPE_READ
    vm.faults.append(
        m.XeVmFault(
            address=page,
            address_precision=FAULT_PAGE,
            access_type=access,
            fault_type=fault.page,
            fault_level=FAULT_LEVEL_PTE,
        )
    )


def xe_vm_get_property_ioctl(
    xef: XeFile, args: m.DrmXeVmGetProperty
) -> m.DrmXeVmGetPropertyReply:
    """DRM_IOCTL_XE_VM_GET_PROPERTY.

    Checks, in order:
    - extensions, pad or reserved non-zero: EINVAL
    - no such VM in this file: ENOENT
    - a property other than FAULTS: EINVAL
    - size 0: the answer is the size the faults take (0 with none), and no faults
    - size beyond what the faults take, or not a multiple of 48: EINVAL
    Then the first size / 48 faults, which the C library writes to `data` (EFAULT
    where it cannot).
    """
    refuse_if(args.extensions or args.pad or any(args.reserved), EINVAL, "MBZ fields set")
    vm = xef.vms.get(args.vm_id)
    refuse_if(vm is None, ENOENT, f"no VM {args.vm_id}")
    assert vm is not None
    refuse_if(
        args.property != DRM_XE_VM_GET_PROPERTY_FAULTS,
        EINVAL,
        f"no VM property {args.property}",
    )
    size = len(vm.faults) * XE_VM_FAULT_SIZE
    if not args.size:
        return m.DrmXeVmGetPropertyReply(size=size)
    refuse_if(
        args.size > size or args.size % XE_VM_FAULT_SIZE,
        EINVAL,
        f"size {args.size} for {size} bytes of faults",
    )
    count = args.size // XE_VM_FAULT_SIZE
    return m.DrmXeVmGetPropertyReply(size=args.size, faults=tuple(vm.faults[:count]))
