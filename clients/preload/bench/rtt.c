/*
 * rtt.c - the C rows of `xec bench rtt` and `xec bench barrier`: round trips timed in C.
 *
 *   rtt ioctl PER_ROUND        DRM_IOCTL_VERSION on /dev/dri/card0 (run under the library)
 *   rtt echo PATH HEX PER_ROUND the same request's bytes (HEX) to a SOCK_SEQPACKET echo
 *   rtt barrier COUNT          COUNT stores to the PCI barrier page (under the library)
 *
 * ioctl and echo wait for a line on stdin before each round and answer with one line:
 * the round's round trips in microseconds. barrier prints the microseconds per store.
 * Kept to the bare loop: the C client's cost is what is measured.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "uapi.h"

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int fail(const char *what)
{
	perror(what);
	return 1;
}

static int rounds(int per_round, int (*once)(void *), void *arg)
{
	char line[16];
	while (fgets(line, sizeof line, stdin)) {
		for (int i = 0; i < per_round; i++) {
			double t0 = now_us();
			if (once(arg))
				return fail("round trip");
			printf("%.2f%c", now_us() - t0, i + 1 < per_round ? ' ' : '\n');
		}
		fflush(stdout);
	}
	return 0;
}

static int version(void *arg)
{
	struct drm_version v = {0};
	return ioctl(*(int *)arg, DRM_IOCTL_VERSION, &v);
}

struct echo {
	int sock;
	unsigned char req[256], reply[65536];
	size_t len;
};

static int echo_once(void *arg)
{
	struct echo *e = arg;
	if (send(e->sock, e->req, e->len, 0) != (ssize_t)e->len)
		return -1;
	return recv(e->sock, e->reply, sizeof e->reply, 0) > 0 ? 0 : -1;
}

static int barrier(long count)
{
	int fd = open("/dev/dri/card0", O_RDWR);
	if (fd < 0)
		return fail("open");
	struct drm_xe_gem_mmap_offset mo = {.flags = DRM_XE_MMAP_OFFSET_FLAG_PCI_BARRIER};
	if (ioctl(fd, DRM_IOCTL_XE_GEM_MMAP_OFFSET, &mo))
		return fail("GEM_MMAP_OFFSET");
	volatile uint32_t *page = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, (off_t)mo.offset);
	if (page == MAP_FAILED)
		return fail("mmap");
	page[0] = 0; /* the first store maps in whatever is lazy */
	double t0 = now_us();
	for (long i = 0; i < count; i++)
		page[i & 1023] = (uint32_t)i;
	printf("%.4f\n", (now_us() - t0) / (double)count);
	munmap((void *)page, 4096);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "ioctl")) {
		int fd = open("/dev/dri/card0", O_RDWR);
		if (fd < 0)
			return fail("open");
		return rounds(atoi(argv[2]), version, &fd);
	}
	if (argc == 5 && !strcmp(argv[1], "echo")) {
		static struct echo e;
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		snprintf(sa.sun_path, sizeof sa.sun_path, "%s", argv[2]);
		e.sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (e.sock < 0 || connect(e.sock, (struct sockaddr *)&sa, sizeof sa))
			return fail("connect");
		for (const char *h = argv[3]; h[0] && h[1] && e.len < sizeof e.req; h += 2)
			sscanf(h, "%2hhx", &e.req[e.len++]);
		return rounds(atoi(argv[4]), echo_once, &e);
	}
	if (argc == 3 && !strcmp(argv[1], "barrier"))
		return barrier(atol(argv[2]));
	fprintf(stderr, "usage: rtt ioctl N | rtt echo PATH HEX N | rtt barrier COUNT\n");
	return 2;
}
