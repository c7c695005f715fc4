/*
 * dmabuf.c - dma-buf descriptors from PRIME_HANDLE_TO_FD: dup, close, lseek (SEEK_END
 * gives the size, SEEK_SET 0 gives 0, anything else EINVAL), mmap, DMA_BUF_IOCTL_SYNC,
 * and the memory living on while any handle, copy or mapping holds it.
 */
#include "check.h"

static int export(int fd, uint32_t bo)
{
	struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
	return ph.fd;
}

int main(void)
{
	int fd = open_card(), other = open_card();
	for (int shift = 0; shift < 6; shift++) {
		uint64_t size = 4096ull << shift;
		uint32_t bo = bo_create(fd, size);
		int buf = export(fd, bo);
		CHECK_OK(gem_close(fd, bo));
		CHECK(lseek(buf, 0, SEEK_END) == (off_t)size);
		CHECK(lseek64(buf, 0, SEEK_SET) == 0);
		CHECK_ERR(lseek(buf, -1, SEEK_END), EINVAL);
		CHECK_ERR(lseek(buf, 1, SEEK_SET), EINVAL);
		CHECK_ERR(lseek(buf, (off_t)size, SEEK_SET), EINVAL);
		CHECK_ERR(lseek(buf, 0, SEEK_CUR), EINVAL);
		CHECK_OK(close(buf));
	}

	uint32_t bo = bo_create(fd, 8192);
	char *cpu = bo_map(fd, bo, 8192);
	strcpy(cpu, "written through the BO");
	int buf = export(fd, bo), copy = dup(buf);
	CHECK_OK(close(buf));
	CHECK_OK(gem_close(fd, bo)); /* the dma-buf holds the memory now */
	char *view = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, copy, 0);
	CHECK(view != MAP_FAILED);
	struct dma_buf_sync sync = {.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW};
	CHECK_OK(ioctl(copy, DMA_BUF_IOCTL_SYNC, &sync));
	CHECK(!strcmp(view, "written through the BO"));
	strcpy(view + 4096, "and through the dma-buf");
	sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW;
	CHECK_OK(ioctl(copy, DMA_BUF_IOCTL_SYNC, &sync));
	sync.flags = 0x80;
	CHECK_ERR(ioctl(copy, DMA_BUF_IOCTL_SYNC, &sync), EINVAL);
	CHECK_ERR(ioctl(copy, DMA_BUF_IOCTL_SYNC, bad_address()), EFAULT);
	CHECK_ERR(ioctl(copy, XED_IOC(1u, 'b', 9, 8), &sync), ENOTTY);
	CHECK(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, copy, 0) == MAP_FAILED);
	CHECK(mmap(NULL, 4096, PROT_READ, MAP_SHARED, copy, 3 * 4096) == MAP_FAILED);

	/* another file imports it: same memory, one handle however often it imports */
	struct drm_prime_handle imp = {.fd = copy};
	CHECK_OK(ioctl(other, DRM_IOCTL_PRIME_FD_TO_HANDLE, &imp));
	CHECK_OK(close(copy));
	char *theirs = bo_map(other, imp.handle, 8192);
	CHECK(!strcmp(theirs + 4096, "and through the dma-buf"));
	CHECK_OK(munmap(view, 8192));
	CHECK_OK(munmap(cpu, 8192));
	CHECK(!strcmp(theirs, "written through the BO"));
	CHECK_OK(munmap(theirs, 8192));
	CHECK_OK(gem_close(other, imp.handle));
	CHECK_OK(close(other));
	CHECK_OK(close(fd));
	return 0;
}
