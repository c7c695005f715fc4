/*
 * procmaps.c - which mappings the program has where, from /proc/self/maps.
 *
 * Read with raw syscalls into a buffer on the stack: it runs in a fork child (before
 * fork returns to it) and with every signal blocked, where neither malloc nor stdio
 * may be used. Lines come in address order, so a walk for a range stops once past it.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysmacros.h>

#include "preload.h"
#include "sys.h"

/* "lo-hi perms offset major:minor inode   path" */
static int parse_line(char *p, struct seg *s)
{
	s->lo = strtoull(p, &p, 16);
	if (*p++ != '-')
		return 0;
	s->hi = strtoull(p, &p, 16);
	if (*p++ != ' ' || strlen(p) < 5)
		return 0;
	s->prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) |
		  (p[2] == 'x' ? PROT_EXEC : 0);
	s->shared = p[3] == 's';
	s->off = strtoull(p + 5, &p, 16);
	unsigned long long major = strtoull(p + 1, &p, 16), minor = strtoull(p + 1, &p, 16);
	uint64_t inode = strtoull(p, &p, 10);
	while (*p == ' ')
		p++;
	s->dev = makedev(major, minor);
	s->ino = inode;
	if (!inode && (!*p || !strncmp(p, "[heap]", 6) || !strncmp(p, "[anon:", 6)))
		s->kind = SEG_ANON; /* not [stack], [vdso], [vvar] */
	else if (s->shared && !strncmp(p, "/dev/zero", 9))
		s->kind = SEG_ANON; /* MAP_SHARED | MAP_ANONYMOUS */
	else
		s->kind = SEG_OTHER;
	return 1;
}

int proc_maps_each(int (*fn)(const struct seg *, void *), void *arg)
{
	int fd = sys_openat(AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	char buf[4096 + 1];
	size_t have = 0;
	int stop = 0, whole = 0;
	while (!stop) {
		long got = syscall(SYS_read, fd, buf + have, sizeof buf - 1 - have);
		if (got <= 0) {
			whole = got == 0;
			break;
		}
		have += (size_t)got;
		buf[have] = 0;
		char *line = buf, *nl;
		while (!stop && (nl = strchr(line, '\n'))) {
			*nl = 0;
			struct seg s;
			if (parse_line(line, &s))
				stop = fn(&s, arg);
			line = nl + 1;
		}
		have -= (size_t)(line - buf);
		memmove(buf, line, have);
		if (have == sizeof buf - 1)
			have = 0; /* a line longer than the buffer: a path nobody binds */
	}
	sys_close(fd);
	return stop || whole ? stop : -1;
}

struct covering {
	uint64_t at, hi;
	struct seg *segs;
	int n, max;
	int done; /* 1: covered; -1: a hole, or too many pieces */
};

static int cover(const struct seg *line, void *arg)
{
	struct covering *c = arg;
	if (line->hi <= c->at)
		return 0;
	if (line->lo > c->at || c->n == c->max)
		return c->done = -1;
	struct seg s = *line; /* clipped to [at, hi) */
	s.off += c->at - s.lo;
	s.lo = c->at;
	if (s.hi > c->hi)
		s.hi = c->hi;
	c->segs[c->n++] = s;
	c->at = s.hi;
	return c->done = c->at >= c->hi;
}

int proc_maps(uint64_t lo, uint64_t hi, struct seg *segs, int max)
{
	struct covering c = {lo, hi, segs, 0, max, 0};
	proc_maps_each(cover, &c);
	return c.done == 1 ? c.n : -1;
}
