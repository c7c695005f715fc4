/*
 * userptr_reuse.c - the arena MAP_USERPTR moves memory into (clients/preload/arena.c) is
 * used again once nothing maps a part of it, on a device small enough that the arena
 * holds 64 MiB: binding 16 MiB eight times over, each unmapped after its work, works
 * every time, whether the program unmaps it or libc does (a free() of an mmapped block,
 * which the library never sees); the device's stores land in the new memory each time.
 * Memory mapped shared when the program forked is never handed out again: the child's
 * copy keeps its contents however much the parent binds and frees after.
 */
#include "check.h"
#include "gpu.h"

#include <malloc.h>
#include <sys/wait.h>

#define VA 0x1a0000ull
#define BIG (16ul << 20)
#define ROUNDS 8 /* twice the arena */

/* BIG bytes at m: bound, a batch in it storing into it, unbound */
static void use(struct gpu *g, uint32_t *m, uint32_t value)
{
	pattern((uint8_t *)m + BIG / 2, 4096, (uint8_t)value);
	CHECK_OK(bind(g, m, VA, BIG));
	CHECK(has_pattern((uint8_t *)m + BIG / 2, 4096, (uint8_t)value)); /* moved, not lost */
	store(g, m, VA, 0, VA + BIG - 8, value);
	CHECK(m[(BIG - 8) / 4] == value);
	unbind(g, VA, BIG);
}

static void unmapped_by_the_program(struct gpu *g)
{
	for (uint32_t i = 0; i < ROUNDS; i++) {
		uint32_t *m = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				   -1, 0);
		CHECK(m != MAP_FAILED);
		use(g, m, 0x100 + i);
		CHECK_OK(munmap(m, BIG));
	}
}

static void freed_by_libc(struct gpu *g)
{
	CHECK(mallopt(M_MMAP_THRESHOLD, 64 << 10)); /* each block its own mmap, and munmap */
	for (uint32_t i = 0; i < ROUNDS; i++) {
		uint32_t *m = aligned_alloc(64 << 10, BIG);
		CHECK(m);
		use(g, m, 0x200 + i);
		free(m);
	}
}

static void shared_with_a_child(struct gpu *g)
{
	uint8_t *shared = mmap(NULL, BIG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			       -1, 0);
	CHECK(shared != MAP_FAILED);
	pattern(shared, BIG, 11);
	CHECK_OK(bind(g, shared, VA, BIG));
	unbind(g, VA, BIG);
	int go[2];
	CHECK_OK(pipe(go));
	pid_t child = fork();
	CHECK(child >= 0);
	if (!child) { /* the parent has unmapped its copy and bound twice the arena since */
		char c;
		_exit(read(go[0], &c, 1) == 1 && has_pattern(shared, BIG, 11) ? 0 : 3);
	}
	CHECK_OK(munmap(shared, BIG));
	unmapped_by_the_program(g);
	CHECK(write(go[1], "g", 1) == 1);
	int status;
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(go[0]);
	close(go[1]);
}

int main(void)
{
	struct gpu g = gpu_open();
	unmapped_by_the_program(&g);
	freed_by_libc(&g);
	shared_with_a_child(&g);
	gpu_close(&g);
	puts("reuse ok");
	return 0;
}
