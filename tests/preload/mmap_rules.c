/*
 * mmap_rules.c - mmap of a drm descriptor as the kernel's mmap handler judges it, at
 * the address, length, prot and flags asked; munmap and everything else untouched.
 */
#include "check.h"

#include <sys/socket.h>

#define MAP_FAILS(call, err) CHECK_ERR((call) == MAP_FAILED ? -1 : 0, err)

int main(void)
{
	int fd = open_card(), other = open_card();
	uint32_t bo = bo_create(fd, 0x4000);
	off_t off = (off_t)bo_offset(fd, bo);
	MAP_FAILS(mmap(NULL, 0, PROT_READ, MAP_SHARED, fd, off), EINVAL);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, off + 1), EINVAL);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, off), EINVAL);
	MAP_FAILS(mmap(NULL, 0x5000, PROT_READ, MAP_SHARED, fd, off), EINVAL);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0x7000000000), EINVAL);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, other, off), EACCES);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, off + 0x1000), EINVAL); /* not its start */

	/* where the program asks, as long as it asks, with the prot it asks */
	char *area = mmap(NULL, 0x10000, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(area != MAP_FAILED);
	char *at = mmap(area + 0x4000, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off);
	CHECK(at == area + 0x4000);
	strcpy(at + 0x1000, "second page");
	char *whole = mmap(NULL, 0x1064, PROT_READ, MAP_SHARED, fd, off); /* up to a page: 2 */
	CHECK(whole != MAP_FAILED && !strcmp(whole + 0x1000, "second page"));
	CHECK_OK(munmap(whole, 0x1064));
	char *ro = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, off);
	CHECK(ro != MAP_FAILED);
	CHECK(mprotect(ro, 4096, PROT_READ | PROT_WRITE) == 0); /* a shared BO mapping may */
	CHECK_OK(munmap(ro, 4096));
	/* a mapping lives on after the handle and the file are gone */
	CHECK_OK(gem_close(fd, bo));
	CHECK_OK(close(fd));
	CHECK(!strcmp(at + 0x1000, "second page"));
	CHECK_OK(munmap(area, 0x10000));

	/* not ours: anonymous memory and files go to the kernel */
	int p[2];
	CHECK_OK(pipe(p));
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, p[0], 0), ENODEV);
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, 12345, 0), EBADF);
	CHECK_ERR(lseek(p[0], 0, SEEK_SET), ESPIPE);
	int s[2];
	CHECK_OK(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, s)); /* looks like a dma-buf: is not */
	MAP_FAILS(mmap(NULL, 4096, PROT_READ, MAP_SHARED, s[0], 0), ENODEV);
	CHECK_ERR(lseek(s[0], 0, SEEK_END), ESPIPE);
	struct dma_buf_sync sync = {.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ};
	CHECK_ERR(ioctl(s[0], DMA_BUF_IOCTL_SYNC, &sync), ENOTTY);
	CHECK_OK(close(other));
	return 0;
}
