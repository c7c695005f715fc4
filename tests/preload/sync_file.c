/*
 * sync_file.c - SYNCOBJ_HANDLE_TO_FD / FD_TO_HANDLE (a syncobj's descriptor, sync files)
 * and DMA_BUF_IOCTL_EXPORT/IMPORT_SYNC_FILE through the library, with the kernel's errno:
 * descriptors close-on-exec, the 16-byte struct of programs built before `point`, sync
 * files that poll readable once signalled, and no descriptor left by a failed copy-out.
 */
#include "fences.h"

#include <poll.h>
#include <stdint.h>

static int wait1(int fd, uint32_t h)
{
	struct drm_syncobj_wait w = {.handles = (uintptr_t)&h, .count_handles = 1};
	return ioctl(fd, DRM_IOCTL_SYNCOBJ_WAIT, &w);
}

static void *ro_page(void)
{
	void *p = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED);
	return p;
}

int main(void)
{
	int fd = open_card(), other = open_card();
	/* a syncobj's descriptor, imported by another file: the same syncobj */
	uint32_t s = create(fd, 0);
	struct drm_syncobj_handle h = {.handle = s, .fd = -1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h));
	CHECK(h.fd >= 0);
	CHECK(fcntl(h.fd, F_GETFD) & FD_CLOEXEC);
	struct drm_syncobj_handle in = {.fd = h.fd};
	CHECK_OK(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in));
	CHECK(in.handle);
	struct drm_syncobj_array sig = {.handles = (uintptr_t)&s, .count_handles = 1};
	CHECK_ERR(wait1(other, in.handle), EINVAL); /* no fence yet */
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_SIGNAL, &sig));
	CHECK_OK(wait1(other, in.handle));
	/* not a file's lseek/mmap/dma-buf ioctl: the kernel's socket answers */
	CHECK_ERR(lseek(h.fd, 0, SEEK_END), ESPIPE);
	struct dma_buf_sync ds = {.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW};
	CHECK_ERR(ioctl(h.fd, DMA_BUF_IOCTL_SYNC, &ds), ENOTTY);
	CHECK_OK(close(h.fd));

	/* a program built before `point`: 16 bytes */
	struct {
		uint32_t handle, flags;
		int32_t fd;
		uint32_t pad;
	} old = {.handle = s, .fd = -1};
	CHECK_OK(ioctl(fd, DRM_IOWR(0xc1, old), &old));
	CHECK(old.fd >= 0);
	CHECK_OK(close(old.fd));

	/* EXPORT_SYNC_FILE of a signalled syncobj: readable; IMPORT_SYNC_FILE into another */
	h = (struct drm_syncobj_handle){
		.handle = s, .flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE, .fd = -1};
	CHECK_OK(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h));
	CHECK(fcntl(h.fd, F_GETFD) & FD_CLOEXEC);
	CHECK(readable_within(h.fd, 0));
	uint32_t t = create(other, 0);
	in = (struct drm_syncobj_handle){
		.handle = t, .flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE, .fd = h.fd};
	CHECK_OK(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in));
	CHECK(in.handle == t);
	CHECK_OK(wait1(other, t));
	int sync_fd = h.fd;

	/* errors */
	in = (struct drm_syncobj_handle){.fd = -1};
	CHECK_ERR(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in), EINVAL);
	in.fd = 987;
	CHECK_ERR(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in), EINVAL);
	in = (struct drm_syncobj_handle){
		.handle = t, .flags = DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE, .fd = 987};
	CHECK_ERR(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in), EINVAL);
	in = (struct drm_syncobj_handle){.fd = sync_fd, .pad = 1};
	CHECK_ERR(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in), EINVAL);
	in = (struct drm_syncobj_handle){.fd = other}; /* a drm file is no syncobj */
	CHECK_ERR(ioctl(other, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, &in), EINVAL);
	h = (struct drm_syncobj_handle){.handle = 0x777};
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h), EINVAL);
	h.flags = DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE;
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, &h), ENOENT);
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, (void *)8), EFAULT);
	CHECK_ERR(ioctl(fd, DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, ro_page()), EFAULT);

	/* dma-buf */
	uint32_t bo = bo_create(fd, 4096);
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	int buf = ph.fd;
	struct dma_buf_export_sync_file ex = {.flags = DMA_BUF_SYNC_RW, .fd = -5};
	CHECK_OK(ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &ex));
	CHECK(ex.fd >= 0 && ex.flags == DMA_BUF_SYNC_RW);
	CHECK(fcntl(ex.fd, F_GETFD) & FD_CLOEXEC);
	CHECK(readable_within(ex.fd, 0)); /* no fences */
	struct dma_buf_import_sync_file im = {.flags = DMA_BUF_SYNC_WRITE, .fd = sync_fd};
	CHECK_OK(ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &im));
	CHECK_OK(close(ex.fd));
	ex = (struct dma_buf_export_sync_file){.flags = DMA_BUF_SYNC_READ};
	CHECK_OK(ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &ex));
	CHECK(readable_within(ex.fd, 0)); /* the imported fence is signalled */
	CHECK_OK(close(ex.fd));
	im.fd = -1;
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &im), EINVAL);
	im.fd = 987;
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &im), EINVAL);
	im = (struct dma_buf_import_sync_file){.flags = 0, .fd = sync_fd};
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &im), EINVAL);
	ex = (struct dma_buf_export_sync_file){.flags = 8};
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &ex), EINVAL);
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, (void *)8), EFAULT);
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, (void *)8), EFAULT);
	/* a read-only argument: the sync file is made, cannot be written back: EFAULT, no leak */
	struct dma_buf_export_sync_file *ro =
		mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED);
	ro->flags = DMA_BUF_SYNC_RW;
	CHECK_OK(mprotect(ro, 4096, PROT_READ));
	int probe = dup(0);
	CHECK_OK(close(probe));
	CHECK_ERR(ioctl(buf, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, ro), EFAULT);
	int probe2 = dup(0);
	CHECK(probe2 == probe);
	CHECK_OK(close(probe2));
	CHECK_ERR(ioctl(sync_fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &ex), ENOTTY); /* not a dma-buf */
	CHECK_OK(close(sync_fd));
	CHECK_OK(close(buf));
	puts("sync files ok");
	return 0;
}
