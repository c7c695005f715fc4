/*
 * sync_file_ioctls.c - a sync file's own ioctls through the library, SYNC_IOC_MERGE and
 * SYNC_IOC_FILE_INFO, with the kernel's errno in the kernel's order: the merged file
 * close-on-exec and readable once signalled, its name kept to 31 bytes, no descriptor
 * left by a failed copy-out, and ENOTTY (the kernel's own answer) on anything that is
 * not a sync file. Two jobs held on an MI_SEMAPHORE_WAIT give a merge of two fences
 * still active, so the fence array and the room check see more than one.
 */
#include "gpu.h"

#include <poll.h>
#include <stdint.h>

/* MI_SEMAPHORE_WAIT, polling, SAD_EQ_SDD: the batch waits until the dword is the data */
#define MI_SEMAPHORE_WAIT_EQ ((0x1Cu << 23) | (1u << 15) | (4u << 12) | 2)

/* the fence a syncobj holds, as a sync file */
static int export_sync_file(int fd, uint32_t syncobj)
{
	struct drm_syncobj_handle h = {.handle = syncobj, .fd = -1,
				       .flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h));
	CHECK(h.fd >= 0);
	return h.fd;
}

static int merge(int fd, int fd2, const char *name, struct sync_merge_data *m)
{
	*m = (struct sync_merge_data){.fd2 = fd2, .fence = -1};
	strncpy(m->name, name, sizeof m->name);
	return ioctl(fd, SYNC_IOC_MERGE, m);
}

static int readable(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int n = poll(&p, 1, 0);
	CHECK(n >= 0);
	return n == 1 && (p.revents & POLLIN);
}

/* a job on g's queue running the batch at va (held until its semaphore is 1): its
 * syncobj's fence as a sync file */
static int held_job(struct gpu *g, uint64_t va)
{
	struct drm_syncobj_create sc = {0};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_SYNCOBJ_CREATE, &sc));
	struct drm_xe_sync s = {.type = DRM_XE_SYNC_TYPE_SYNCOBJ, .flags = DRM_XE_SYNC_FLAG_SIGNAL,
				.handle = sc.handle};
	struct drm_xe_exec ex = {.exec_queue_id = g->queue, .num_syncs = 1,
				 .syncs = (uintptr_t)&s, .address = va, .num_batch_buffer = 1};
	CHECK_OK(ioctl(g->fd, DRM_IOCTL_XE_EXEC, &ex));
	return export_sync_file(g->fd, sc.handle);
}

/* two active fences merged: status 0 until both signal, each listed */
static void two_active(void)
{
	struct gpu g = gpu_open();
	uint32_t *cpu =
		mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(cpu != MAP_FAILED);
	const uint64_t va = 0x100000, sem = va + 0x800;
	CHECK_OK(bind(&g, cpu, va, 4096));
	uint32_t batch[] = {MI_SEMAPHORE_WAIT_EQ, 1, (uint32_t)sem, (uint32_t)(sem >> 32),
			    MI_BATCH_BUFFER_END};
	memcpy(cpu, batch, sizeof batch);
	int a = held_job(&g, va), b = held_job(&g, va);
	struct sync_merge_data m;
	CHECK_OK(merge(a, b, "two", &m));
	CHECK(!readable(m.fence));
	struct sync_file_info info = {0};
	CHECK_OK(ioctl(m.fence, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.num_fences == 2 && info.status == 0 && !strcmp(info.name, "two"));
	struct sync_fence_info fences[3];
	info = (struct sync_file_info){.num_fences = 1, .sync_fence_info = (uintptr_t)fences};
	CHECK_ERR(ioctl(m.fence, SYNC_IOC_FILE_INFO, &info), EINVAL); /* room for 1 of 2 */
	memset(fences, 0x5a, sizeof fences);
	info.num_fences = 3;
	CHECK_OK(ioctl(m.fence, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.num_fences == 2 && info.status == 0);
	CHECK(fences[0].status == 0 && fences[1].status == 0 && fences[1].driver_name[0]);
	CHECK(((unsigned char *)&fences[2])[0] == 0x5a);
	__atomic_store_n(&cpu[(sem - va) / 4], 1, __ATOMIC_SEQ_CST); /* both jobs go on */
	struct pollfd p = {.fd = m.fence, .events = POLLIN};
	CHECK(poll(&p, 1, 60000) == 1);
	info.num_fences = 3;
	CHECK_OK(ioctl(m.fence, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.status == 1 && fences[0].status == 1 && fences[1].status == 1);
	CHECK(readable(a) && readable(b));
	CHECK_OK(close(m.fence));
	CHECK_OK(close(a));
	CHECK_OK(close(b));
	unbind(&g, va, 4096);
	gpu_close(&g);
}

/* the lowest free descriptor number: the same before and after a call that leaks none */
static int next_fd(void)
{
	int probe = dup(0);
	CHECK(probe >= 0);
	CHECK_OK(close(probe));
	return probe;
}

int main(void)
{
	int fd = open_card();
	struct drm_syncobj_create sc = {.flags = DRM_SYNCOBJ_CREATE_SIGNALED};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &sc));
	int a = export_sync_file(fd, sc.handle), b = export_sync_file(fd, sc.handle);

	/* MERGE: a new sync file, close-on-exec, readable (both signalled) */
	struct sync_merge_data m;
	CHECK_OK(merge(a, b, "merged", &m));
	int merged = m.fence;
	CHECK(merged >= 0 && merged != a && merged != b);
	CHECK(m.fd2 == b && !strcmp(m.name, "merged"));
	CHECK(fcntl(merged, F_GETFD) & FD_CLOEXEC);
	CHECK(readable(merged));

	/* FILE_INFO: the count first (num_fences 0), then the fences */
	struct sync_file_info info = {.sync_fence_info = (uintptr_t)bad_address()};
	CHECK_OK(ioctl(merged, SYNC_IOC_FILE_INFO, &info)); /* the array is not touched */
	CHECK(info.status == 1 && info.num_fences >= 1);
	CHECK(!strcmp(info.name, "merged"));
	uint32_t count = info.num_fences;
	struct sync_fence_info fences[8];
	CHECK(count + 1 <= 8);
	memset(fences, 0x5a, sizeof fences);
	info = (struct sync_file_info){.num_fences = count + 1,
				       .sync_fence_info = (uintptr_t)fences};
	CHECK_OK(ioctl(merged, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.status == 1 && info.num_fences == count && !strcmp(info.name, "merged"));
	for (uint32_t i = 0; i < count; i++) {
		CHECK(fences[i].status == 1);
		CHECK(fences[i].driver_name[0] && memchr(fences[i].driver_name, 0, 32));
		CHECK(memchr(fences[i].obj_name, 0, 32));
	}
	CHECK(((unsigned char *)&fences[count])[0] == 0x5a); /* only `count` written */

	/* an exported (unmerged) sync file answers too, with a name of its own */
	info = (struct sync_file_info){0};
	CHECK_OK(ioctl(a, SYNC_IOC_FILE_INFO, &info));
	CHECK(info.status == 1 && info.num_fences >= 1 && memchr(info.name, 0, 32));

	/* a name of 32 bytes: 31 kept, and the struct written back NUL-terminated so */
	struct sync_merge_data longer = {.fd2 = a};
	memset(longer.name, 'n', sizeof longer.name);
	CHECK_OK(ioctl(a, SYNC_IOC_MERGE, &longer));
	CHECK(longer.name[31] == 0 && strlen(longer.name) == 31);
	info = (struct sync_file_info){0};
	CHECK_OK(ioctl(longer.fence, SYNC_IOC_FILE_INFO, &info));
	CHECK(!memcmp(info.name, longer.name, 32));
	CHECK_OK(close(longer.fence));
	/* any bytes in a name (not UTF-8 here): merged all the same */
	CHECK_OK(merge(a, a, "\xff\xfe" "ab", &m));
	info = (struct sync_file_info){0};
	CHECK_OK(ioctl(m.fence, SYNC_IOC_FILE_INFO, &info));
	CHECK(strlen(info.name) == 4 && !strcmp(info.name + 2, "ab"));
	CHECK_OK(close(m.fence));

	/* MERGE errors, in the kernel's order: EFAULT, EINVAL (flags, pad), ENOENT (fd2) */
	CHECK_ERR(ioctl(a, SYNC_IOC_MERGE, bad_address()), EFAULT);
	m = (struct sync_merge_data){.fd2 = b, .flags = 1};
	CHECK_ERR(ioctl(a, SYNC_IOC_MERGE, &m), EINVAL);
	m = (struct sync_merge_data){.fd2 = b, .pad = 1};
	CHECK_ERR(ioctl(a, SYNC_IOC_MERGE, &m), EINVAL);
	m = (struct sync_merge_data){.fd2 = -1, .flags = 1}; /* flags before fd2 */
	CHECK_ERR(ioctl(a, SYNC_IOC_MERGE, &m), EINVAL);
	CHECK_ERR(merge(a, -1, "x", &m), ENOENT);
	CHECK_ERR(merge(a, fd, "x", &m), ENOENT); /* a drm file is no sync file */
	CHECK_ERR(merge(a, 987, "x", &m), ENOENT); /* not open */
	int pipes[2];
	CHECK_OK(pipe(pipes));
	CHECK_ERR(merge(a, pipes[0], "x", &m), ENOENT);
	/* a read-only argument: the merged file is made, cannot be written back: EFAULT,
	 * and no descriptor is left behind */
	struct sync_merge_data *ro =
		mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED);
	*ro = (struct sync_merge_data){.fd2 = b};
	CHECK_OK(mprotect(ro, 4096, PROT_READ));
	int free_fd = next_fd();
	CHECK_ERR(ioctl(a, SYNC_IOC_MERGE, ro), EFAULT);
	CHECK(next_fd() == free_fd);

	/* FILE_INFO errors: EFAULT, EINVAL (flags, pad, too little room), EFAULT (the array) */
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, bad_address()), EFAULT);
	info = (struct sync_file_info){.flags = 1};
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, &info), EINVAL);
	info = (struct sync_file_info){.pad = 1};
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, &info), EINVAL);
	if (count > 1) { /* a signalled syncobj's fences may merge into one */
		info = (struct sync_file_info){.num_fences = count - 1,
					       .sync_fence_info = (uintptr_t)fences};
		CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, &info), EINVAL);
	}
	info = (struct sync_file_info){.num_fences = count,
				       .sync_fence_info = (uintptr_t)read_only_page()};
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, &info), EFAULT);
	CHECK(info.num_fences == count && info.name[0] == 0); /* the struct not written */
	info.sync_fence_info = (uintptr_t)unmapped_page();
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, &info), EFAULT);
	struct sync_file_info *info_ro = read_only_page();
	CHECK_ERR(ioctl(merged, SYNC_IOC_FILE_INFO, info_ro), EFAULT);

	/* not a sync file: the kernel's ENOTTY, before it reads the argument; a closed
	 * descriptor: EBADF */
	uint32_t bo = bo_create(fd, 4096);
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	CHECK_ERR(merge(ph.fd, b, "x", &m), ENOTTY);
	CHECK_ERR(merge(pipes[0], b, "x", &m), ENOTTY);
	CHECK_ERR(merge(pipes[0], -1, "x", &m), ENOTTY);
	CHECK_ERR(ioctl(pipes[0], SYNC_IOC_MERGE, bad_address()), ENOTTY);
	info = (struct sync_file_info){0};
	CHECK_ERR(ioctl(ph.fd, SYNC_IOC_FILE_INFO, &info), ENOTTY);
	CHECK_ERR(ioctl(pipes[1], SYNC_IOC_FILE_INFO, &info), ENOTTY);
	CHECK_ERR(ioctl(pipes[1], SYNC_IOC_FILE_INFO, bad_address()), ENOTTY);
	CHECK_ERR(merge(987, b, "x", &m), EBADF);
	CHECK_ERR(ioctl(987, SYNC_IOC_FILE_INFO, &info), EBADF);
	/* SET_DEADLINE: a hint, taken from a sync file of the daemon's; pad must be zero */
	struct sync_set_deadline dl = {.deadline_ns = 1};
	CHECK_OK(ioctl(merged, SYNC_IOC_SET_DEADLINE, &dl));
	dl.pad = 1;
	CHECK_ERR(ioctl(merged, SYNC_IOC_SET_DEADLINE, &dl), EINVAL);
	CHECK_ERR(ioctl(merged, SYNC_IOC_SET_DEADLINE, bad_address()), EFAULT);
	CHECK_ERR(ioctl(pipes[1], SYNC_IOC_SET_DEADLINE, &dl), ENOTTY);
	CHECK_ERR(ioctl(ph.fd, SYNC_IOC_SET_DEADLINE, bad_address()), ENOTTY);
	/* another '>' number on a sync file: ENOTTY, as sync_file_ioctl() answers */
	CHECK_ERR(ioctl(merged, XED_IOC(XED_IOC_READ | XED_IOC_WRITE, SYNC_IOC_MAGIC, 9, 8), &info),
		  ENOTTY);

	/* the merged file stays usable: merged again, and imported into a syncobj */
	CHECK_OK(merge(merged, a, "again", &m));
	CHECK(readable(m.fence));
	struct drm_syncobj_create empty = {0};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_CREATE, &empty));
	struct drm_syncobj_handle in = {.handle = empty.handle,
					.flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE,
					.fd = m.fence};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in));
	struct drm_syncobj_wait w = {.handles = (uintptr_t)&empty.handle, .count_handles = 1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_WAIT, &w));

	CHECK_OK(close(m.fence));
	CHECK_OK(close(merged));
	CHECK_OK(close(a));
	CHECK_OK(close(b));
	CHECK_OK(close(ph.fd));
	CHECK_OK(close(pipes[0]));
	CHECK_OK(close(pipes[1]));
	two_active();
	puts("sync file ioctls ok");
	return 0;
}
