/*
 * userptr.c - MAP_USERPTR of the program's own memory (clients/preload/userptr.c).
 *
 * Heap and anonymous memory bind as they are: the batch the device runs is read from
 * them, its stores land where the program reads, and what was there before the bind is
 * still there. One range bound through two drm files is one set of pages. Memory the
 * daemon cannot reach (the stack, a file's pages, nothing mapped, PROT_NONE) is EFAULT,
 * an unaligned address EINVAL. Fresh memory mapped over a binding (MAP_FIXED) is what
 * the device then sees; memory moved by mremap binds where it now is; unmapped memory
 * binds no more, and a batch reaching it under an old binding faults. A forked child's
 * copy of private memory is its own, while shared memory stays shared.
 */
#include "check.h"
#include "gpu.h"

#include <stdint.h>
#include <sys/wait.h>

#define VA 0x1a0000ull
#define SIZE 0x10000ul

/* malloc'd memory: read and written by the device through one file, then another */
static void heap(struct gpu *g, struct gpu *other)
{
	uint32_t *buf = aligned_alloc(4096, SIZE);
	CHECK(buf);
	pattern((uint8_t *)buf + SIZE / 2, SIZE / 2, 3);
	CHECK_OK(bind(g, buf, VA, SIZE));
	CHECK(has_pattern((uint8_t *)buf + SIZE / 2, SIZE / 2, 3)); /* moved, not lost */
	store(g, buf, VA, 0, VA + 0x800, 0xc0ffee);
	CHECK(buf[0x800 / 4] == 0xc0ffee);
	store(g, buf, VA, 0x100, VA + 0x804, 0xbeef); /* a batch written after the bind */
	CHECK(buf[0x804 / 4] == 0xbeef);
	/* the same pages through another file, bound at another address */
	CHECK_OK(bind(other, buf, VA + SIZE, SIZE));
	store(other, buf, VA + SIZE, 0x200, VA + SIZE + 0x808, 0xfeed);
	CHECK(buf[0x808 / 4] == 0xfeed);
	CHECK(has_pattern((uint8_t *)buf + SIZE / 2, SIZE / 2, 3));
	unbind(g, VA, SIZE);
	unbind(other, VA + SIZE, SIZE);
	free(buf);
	void *again = malloc(3 * SIZE); /* the heap goes on working */
	CHECK(again);
	memset(again, 1, 3 * SIZE);
	free(again);
}

static void unreachable(struct gpu *g)
{
	char stack[3 * 4096];
	char *on_stack = (char *)(((uintptr_t)stack + 4095) & ~4095ul);
	CHECK_ERR(bind(g, on_stack, VA, 4096), EFAULT);
	FILE *tmp = tmpfile();
	CHECK(tmp);
	CHECK_OK(ftruncate(fileno(tmp), 4096));
	void *file = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fileno(tmp), 0);
	CHECK(file != MAP_FAILED);
	CHECK_ERR(bind(g, file, VA, 4096), EFAULT);
	CHECK_OK(munmap(file, 4096));
	fclose(tmp);
	CHECK_ERR(bind(g, unmapped_page(), VA, 4096), EFAULT);
	void *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(none != MAP_FAILED);
	CHECK_ERR(bind(g, none, VA, 4096), EFAULT);
	CHECK_OK(munmap(none, 4096));
	uint8_t *heap = aligned_alloc(4096, 2 * 4096);
	CHECK(heap);
	CHECK_ERR(bind(g, heap + 16, VA, 4096), EINVAL); /* page aligned, as xe asks */
	free(heap);
}

/* fresh memory mapped over a binding is what the device sees from then on */
static void replaced(struct gpu *g, int type)
{
	uint32_t *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, type | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	CHECK_OK(bind(g, m, VA, SIZE));
	store(g, m, VA, 0, VA + 0x800, 1);
	CHECK(m[0x800 / 4] == 1);
	uint32_t *fresh = mmap(m, SIZE, PROT_READ | PROT_WRITE, type | MAP_FIXED | MAP_ANONYMOUS,
			       -1, 0);
	CHECK(fresh == m);
	for (size_t i = 0; i < SIZE / 4; i++)
		CHECK(m[i] == 0); /* fresh memory reads zeros */
	store(g, m, VA, 0x40, VA + 0x800, 2);
	CHECK(m[0x800 / 4] == 2);
	unbind(g, VA, SIZE);
	CHECK_OK(munmap(m, SIZE));
	CHECK_ERR(bind(g, m, VA, SIZE), EFAULT); /* nothing there now */
}

/* unmapped under a binding: the daemon hears of it, and a batch storing there faults
 * (the queue is banned: its next EXEC is ECANCELED) rather than reach freed pages */
static void freed(void)
{
	struct gpu g = gpu_open();
	uint32_t *batch = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint32_t *target = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(batch != MAP_FAILED && target != MAP_FAILED);
	CHECK_OK(bind(&g, batch, VA, SIZE));
	CHECK_OK(bind(&g, target, VA + SIZE, SIZE));
	store(&g, batch, VA, 0, VA + SIZE, 1);
	CHECK(target[0] == 1);
	CHECK_OK(munmap(target, SIZE));
	store(&g, batch, VA, 0x40, VA + SIZE, 2); /* faults: its fence signals all the same */
	struct drm_xe_exec ex = {.exec_queue_id = g.queue, .address = VA + 0x40,
				 .num_batch_buffer = 1};
	CHECK_ERR(ioctl(g.fd, DRM_IOCTL_XE_EXEC, &ex), ECANCELED);
	CHECK_OK(munmap(batch, SIZE));
	gpu_close(&g);
}

/* moved by mremap: bound where it now is */
static void moved(struct gpu *g)
{
	uint32_t *m = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED);
	pattern((uint8_t *)m + SIZE / 2, SIZE / 2, 9);
	CHECK_OK(bind(g, m, VA, SIZE));
	unbind(g, VA, SIZE);
	uint32_t *to = mremap(m, SIZE, 2 * SIZE, MREMAP_MAYMOVE);
	CHECK(to != MAP_FAILED);
	CHECK(has_pattern((uint8_t *)to + SIZE / 2, SIZE / 2, 9));
	CHECK_OK(bind(g, to, VA, SIZE));
	store(g, to, VA, 0, VA + 0x800, 3);
	CHECK(to[0x800 / 4] == 3);
	unbind(g, VA, SIZE);
	CHECK_OK(munmap(to, 2 * SIZE));
}

/* a child's copy of private memory is its own; shared memory stays shared */
static void forked(struct gpu *g)
{
	uint32_t *priv = aligned_alloc(4096, SIZE);
	uint32_t *shared = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
				-1, 0);
	CHECK(priv && shared != MAP_FAILED);
	pattern((uint8_t *)priv, SIZE, 5);
	CHECK_OK(bind(g, priv, VA, SIZE));
	CHECK_OK(bind(g, shared, VA + SIZE, SIZE));
	int go[2];
	CHECK_OK(pipe(go));
	pid_t child = fork();
	CHECK(child >= 0);
	if (!child) { /* what it had at fork, whatever the parent has written since */
		char c;
		int ok = read(go[0], &c, 1) == 1 && has_pattern((uint8_t *)priv, SIZE, 5);
		memset(priv, 0x55, SIZE);
		shared[0] = 0x5eed;
		void *more = malloc(SIZE);
		ok &= more != NULL;
		free(more);
		_exit(ok ? 0 : 3);
	}
	memset(priv, 0x66, SIZE); /* at once, before the child reads */
	CHECK(write(go[1], "g", 1) == 1);
	int status;
	CHECK(waitpid(child, &status, 0) == child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (size_t i = 0; i < SIZE / 4; i++)
		CHECK(priv[i] == 0x66666666); /* the child's stores stayed its own */
	CHECK(shared[0] == 0x5eed);
	close(go[0]);
	close(go[1]);
	store(g, shared, VA + SIZE, 0x100, VA + 0x10, 7); /* the parent's binds go on */
	CHECK(priv[0x10 / 4] == 7);
	unbind(g, VA, SIZE);
	unbind(g, VA + SIZE, SIZE);
	free(priv);
	CHECK_OK(munmap(shared, SIZE));
}

/* `hold`: bind heap memory, say so with the pid, and wait for a line on stdin: the test
 * looks at the daemon meanwhile (a first bind costs the file no extra connection) */
static int hold(void)
{
	struct gpu g = gpu_open();
	uint32_t *buf = aligned_alloc(4096, SIZE);
	CHECK(buf);
	CHECK_OK(bind(&g, buf, VA, SIZE));
	printf("bound %d\n", (int)getpid());
	fflush(stdout);
	char line[8];
	CHECK(fgets(line, sizeof line, stdin));
	unbind(&g, VA, SIZE);
	gpu_close(&g);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "hold"))
		return hold();
	struct gpu g = gpu_open(), other = gpu_open();
	heap(&g, &other);
	unreachable(&g);
	replaced(&g, MAP_SHARED);
	replaced(&g, MAP_PRIVATE);
	moved(&g);
	freed();
	forked(&g);
	gpu_close(&other);
	gpu_close(&g);
	puts("userptr ok");
	return 0;
}
