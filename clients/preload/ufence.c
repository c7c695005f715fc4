/*
 * ufence.c - user fences in memory the daemon cannot reach (plain C memory).
 *
 * A VM_BIND user fence and a WAIT_USER_FENCE address are user pointers. The daemon
 * reaches only memory it handed out, so one inside a mapping of the file is translated
 * (mmap.c) and the daemon writes or watches it. One anywhere else is the library's:
 *
 * - VM_BIND: xe writes the fence once the binds are done, from a worker, and a write
 *   that faults is dropped. Here the binds are done when the daemon answers, so the
 *   library writes it then, the same way. The fence is kept back from the daemon only
 *   if it passes every check the daemon makes of a user fence; any other goes as it
 *   is, with an address nothing has, so that its errno comes from the daemon.
 * - WAIT_USER_FENCE: the daemon makes its checks first (it answers EFAULT for the
 *   address nothing has once they pass); then the library watches the word itself,
 *   with the ioctl's timeout rules. Only this process (a VM_BIND's fence) or another
 *   one sharing the memory can write it: a device never does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <time.h>

#include "preload.h"
#include "proto.h"

#define TASK_SIZE 0x00007ffffffff000ull /* x86-64: access_ok() refuses the rest */

/* not inside a mapping of `f`, and a user address: the library's to write and watch */
int ufence_is_local(struct xed_file *f, uint64_t addr)
{
	uint64_t fake;
	return addr < TASK_SIZE && !user_address(f, addr, &fake);
}

/* The index of the VM_BIND user fence the library writes itself, or -1: the only user
 * fence of the syncs, one the daemon's checks would pass (SIGNAL, no other flag,
 * reserved zero, 8-byte aligned, binds to do), at a local address. */
int ufence_kept_back(struct xed_file *f, const struct drm_xe_sync *s, uint32_t n, uint32_t binds)
{
	int found = -1;
	for (uint32_t i = 0; i < n; i++) {
		if (s[i].type != DRM_XE_SYNC_TYPE_USER_FENCE)
			continue;
		if (found >= 0)
			return -1; /* more than one: the daemon's EINVAL */
		found = (int)i;
	}
	if (found < 0 || !binds)
		return -1;
	const struct drm_xe_sync *u = &s[found];
	if (u->flags != DRM_XE_SYNC_FLAG_SIGNAL || u->reserved[0] || u->reserved[1] || u->addr & 7)
		return -1;
	return ufence_is_local(f, u->addr) ? found : -1;
}

/* the binds are done: the fence lands, or is dropped if the memory is gone */
void ufence_signal(const struct drm_xe_sync *u)
{
	uint64_t value = u->timeline_value;
	(void)copy_to_user(u->addr, &value, sizeof value);
}

static int64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int passes(unsigned op, uint64_t have, uint64_t want)
{
	switch (op) {
	case DRM_XE_UFENCE_WAIT_OP_EQ: return have == want;
	case DRM_XE_UFENCE_WAIT_OP_NEQ: return have != want;
	case DRM_XE_UFENCE_WAIT_OP_GT: return have > want;
	case DRM_XE_UFENCE_WAIT_OP_GTE: return have >= want;
	case DRM_XE_UFENCE_WAIT_OP_LT: return have < want;
	default: return have <= want; /* LTE: the daemon refused any other */
	}
}

/* Whether exec queue `queue` of `f` was reset (banned): EXEC_QUEUE_GET_PROPERTY(BAN), as
 * xe's wait looks at the queue's reset status each time the word does not pass. An
 * answer that does not come (no channel, the daemon gone) counts as not reset. */
static int queue_reset(struct xed_file *f, uint32_t queue)
{
	struct drm_xe_exec_queue_get_property ban = {
		.exec_queue_id = queue, .property = DRM_XE_EXEC_QUEUE_GET_PROPERTY_BAN,
	};
	struct xcall c;
	if (xc_begin(&c, f, XED_OP_XE_EXEC_QUEUE_GET_PROPERTY))
		return 0;
	int reset = !xe_exec_queue_get_property(&c, &ban) && ban.value;
	xc_end(&c);
	return reset;
}

/* WAIT_USER_FENCE on a local word, once the daemon's checks passed: 0, ETIME, EFAULT,
 * or EIO once the queue it names was reset (the word not passing); the timeout written
 * back as the kernel does (what is left of a relative one) */
int ufence_wait(struct xed_file *f, struct drm_xe_wait_user_fence *a)
{
	int relative = !(a->flags & DRM_XE_UFENCE_WAIT_FLAG_ABSTIME);
	int64_t start = now_ns(), until = INT64_MAX;
	if (!relative && a->timeout >= 0)
		until = a->timeout;
	else if (a->timeout >= 0 && a->timeout < INT64_MAX - start) /* else: no end in sight */
		until = start + a->timeout;
	uint64_t want = a->value & a->mask, have;
	long pause = 20000; /* ns: a word just waited on is often about to move */
	for (;;) {
		if (copy_from_user(&have, a->addr, sizeof have))
			return EFAULT;
		if (passes(a->op, have & a->mask, want))
			break;
		/* asked of the daemon once the naps are long: a wait just begun costs nothing */
		if (a->exec_queue_id && pause >= 160000 && queue_reset(f, a->exec_queue_id))
			return EIO;
		int64_t now = now_ns();
		if (now >= until) {
			if (relative)
				a->timeout = 0;
			return ETIME;
		}
		int64_t nap = until - now < pause ? until - now : pause;
		struct timespec t = {nap / 1000000000, nap % 1000000000};
		nanosleep(&t, NULL);
		pause = pause < 1000000 ? pause * 2 : 1000000;
	}
	if (relative) {
		int64_t elapsed = now_ns() - start;
		int64_t initial = a->timeout < 0 ? LONG_MAX : a->timeout;
		a->timeout = initial - elapsed > 0 ? initial - elapsed : 0;
	}
	return 0;
}
