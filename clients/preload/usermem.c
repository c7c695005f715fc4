/*
 * usermem.c - the program's memory, read and written as the kernel's copy_*_user do.
 *
 * A program may pass any pointer in an ioctl argument (IGT passes NULL, unmapped and
 * read-only buffers on purpose) and must get EFAULT, never a SIGSEGV raised inside this
 * library, which could even be taken while we hold a channel. process_vm_readv/writev
 * on our own pid go through the kernel's page-table walk: a bad address fails the call
 * instead of faulting, and a read-only page refuses a write exactly as copy_to_user
 * would. Where a sandbox forbids them, a pipe does the same job a little slower.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/uio.h>

#include "preload.h"
#include "sys.h"

static atomic_int no_vm_calls; /* process_vm_* refused here: use the pipe */

/* through a pipe: write(2) reads the source, read(2) writes the destination */
static int copy_by_pipe(void *dst, const void *src, size_t n)
{
	int p[2];
	if (syscall(SYS_pipe2, p, O_CLOEXEC) < 0)
		return errno == EMFILE || errno == ENFILE ? ENOMEM : EFAULT;
	int err = 0;
	while (n && !err) {
		size_t chunk = n < 4096 ? n : 4096;
		if (syscall(SYS_write, p[1], src, chunk) != (long)chunk ||
		    syscall(SYS_read, p[0], dst, chunk) != (long)chunk)
			err = EFAULT;
		src = (const char *)src + chunk;
		dst = (char *)dst + chunk;
		n -= chunk;
	}
	sys_close(p[0]);
	sys_close(p[1]);
	return err;
}

static int vm_copy(int write, void *local, uint64_t remote, size_t n)
{
	if (!n)
		return 0;
	if (!atomic_load_explicit(&no_vm_calls, memory_order_relaxed)) {
		struct iovec l = {local, n}, r = {(void *)(uintptr_t)remote, n};
		/* getpid, not xed_pid: this may run before our constructor (another
		 * library's opening a file) or in a child forked by a raw clone, and a stale
		 * pid would read another process's memory or, 0, refuse the call for good */
		pid_t self = (pid_t)syscall(SYS_getpid);
		long done = syscall(write ? SYS_process_vm_writev : SYS_process_vm_readv, self, &l,
				    1ul, &r, 1ul, 0ul);
		if (done == (long)n)
			return 0;
		if (done >= 0 || errno == EFAULT)
			return EFAULT;
		if (errno != ENOSYS && errno != EPERM && errno != ESRCH)
			return EFAULT;
		atomic_store(&no_vm_calls, 1);
	}
	if (write)
		return copy_by_pipe((void *)(uintptr_t)remote, local, n);
	return copy_by_pipe(local, (const void *)(uintptr_t)remote, n);
}

int copy_from_user(void *dst, uint64_t src, size_t n) { return vm_copy(0, dst, src, n); }

int copy_to_user(uint64_t dst, const void *src, size_t n)
{
	return vm_copy(1, (void *)src, dst, n);
}

long string_from_user(char *dst, const char *src, size_t max)
{
	/* page by page: the string may end just before an unmapped page */
	uintptr_t at = (uintptr_t)src;
	size_t have = 0;
	while (have < max) {
		size_t room = 4096 - (at & 4095);
		if (room > max - have)
			room = max - have;
		if (copy_from_user(dst + have, at, room))
			return -EFAULT;
		char *nul = memchr(dst + have, 0, room);
		if (nul)
			return nul - dst;
		have += room;
		at += room;
	}
	return -ENAMETOOLONG;
}
