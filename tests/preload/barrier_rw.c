/* Reads and stores on the barrier page in one thread: every store of every width (and
 * read-modify-writes, string stores, stores whose address no register points near) reads
 * back 0xdeadbeef, even on the very next instruction, and counts exactly one barrier. */
#include "barrier_common.h"

static uint32_t expect;

static void counted(const struct barrier *b, uint32_t n, const char *what)
{
	expect += n;
	if (barrier_count(b) != expect) {
		fprintf(stderr, "%s: count %u, want %u\n", what, barrier_count(b), expect);
		exit(98);
	}
	barrier_all_idle(b);
}

int main(void)
{
	struct barrier b = barrier_open();
	volatile unsigned char *bytes = (volatile unsigned char *)b.page;
	uint64_t r;
	uint32_t v;

	barrier_all_idle(&b);
	CHECK(barrier_count(&b) == 0);

	bytes[5] = 1;
	counted(&b, 1, "1-byte store");
	*(volatile uint16_t *)(bytes + 10) = 2;
	counted(&b, 1, "2-byte store");
	b.page[7] = 3;
	counted(&b, 1, "4-byte store");
	*(volatile uint64_t *)(bytes + 4088) = 4;
	counted(&b, 1, "8-byte store");
	__asm__ volatile("pxor %%xmm0, %%xmm0; movups %%xmm0, (%0)" ::"r"(bytes + 64) : "xmm0", "memory");
	counted(&b, 1, "16-byte store");

	/* the very next instruction reads what the page holds, not what was stored */
	__asm__ volatile("movl $7, (%1)\n\tmovl (%1), %0" : "=&r"(v) : "r"(b.page + 3) : "memory");
	CHECK(v == XED_PCI_BARRIER_IDLE);
	counted(&b, 1, "store then load");

	/* read-modify-writes read 0xdeadbeef, as the device answers */
	__asm__ volatile("lock addl $1, (%0)" ::"r"(b.page + 9) : "memory", "cc");
	counted(&b, 1, "lock add");
	v = 5;
	__asm__ volatile("xchgl %0, (%1)" : "+r"(v) : "r"(b.page + 11) : "memory");
	CHECK(v == XED_PCI_BARRIER_IDLE);
	counted(&b, 1, "xchg");
	v = 0;
	__asm__ volatile("lock cmpxchgl %2, (%1)" : "+a"(v) : "r"(b.page + 12), "r"(1u) : "memory", "cc");
	CHECK(v == XED_PCI_BARRIER_IDLE);
	counted(&b, 1, "cmpxchg");

	/* the address register stored as data, and a register overwritten by the store */
	r = (uint64_t)(uintptr_t)(b.page + 20);
	__asm__ volatile("movq %0, (%0)" ::"r"(r) : "memory");
	counted(&b, 1, "address as data");
	r = (uint64_t)(uintptr_t)(b.page + 22);
	__asm__ volatile("xchgq %0, (%0)" : "+r"(r)::"memory");
	CHECK(r == 0xdeadbeefdeadbeefull);
	counted(&b, 1, "xchg into its own address register");

	{ /* a string store: each element is one store on the bus */
		uint64_t di = (uint64_t)(uintptr_t)(bytes + 100), cx = 16;

		__asm__ volatile("rep stosb" : "+D"(di), "+c"(cx) : "a"(0) : "memory");
		CHECK(di == (uint64_t)(uintptr_t)(bytes + 116) && cx == 0);
		counted(&b, 16, "rep stosb x16");
	}
	{ /* no register points near the page: the page is made writable for one step */
		uint64_t base = (uint64_t)(uintptr_t)b.page - 65536, idx = 65536 + 200;

		__asm__ volatile("sub $128, %%rsp\n\tpush %%rbp\n\txor %%ebp, %%ebp\n\t"
				 "xor %%eax, %%eax\n\txor %%ebx, %%ebx\n\txor %%esi, %%esi\n\t"
				 "xor %%edi, %%edi\n\txor %%r8d, %%r8d\n\txor %%r9d, %%r9d\n\t"
				 "xor %%r10d, %%r10d\n\txor %%r11d, %%r11d\n\txor %%r12d, %%r12d\n\t"
				 "xor %%r13d, %%r13d\n\txor %%r14d, %%r14d\n\txor %%r15d, %%r15d\n\t"
				 "movl $9, (%%rdx,%%rcx)\n\tpop %%rbp\n\tadd $128, %%rsp"
				 :
				 : "d"(base), "c"(idx)
				 : "rax", "rbx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
				   "r14", "r15", "memory");
		counted(&b, 1, "address from far registers only");
		/* a register points near the page but is not the address: moved in vain, the
		 * store faults on the page again and takes the same road */
		r = (uint64_t)(uintptr_t)b.page;
		__asm__ volatile("movq %2, (%0,%1)" ::"r"(base), "r"(idx), "r"(r) : "memory");
		CHECK(r == (uint64_t)(uintptr_t)b.page);
		CHECK(base == (uint64_t)(uintptr_t)b.page - 65536 && idx == 65536 + 200);
		counted(&b, 1, "data register near the page");
	}

	/* the daemon read the previous number and restored 0xdeadbeef over this one: the
	 * last number is published again when the page goes */
	b.page[1] = 2;
	expect += 1;
	b.daemon[0] = XED_PCI_BARRIER_IDLE;
	xed_barrier_unmap((void *)b.page, 4096);
	CHECK(barrier_count(&b) == expect);
	CHECK(munmap((void *)b.page, 4096) == 0);

	{ /* MAP_FIXED puts the page where it is asked, over what was there */
		void *want = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		volatile uint32_t *p;

		CHECK(want != MAP_FAILED);
		*(volatile uint32_t *)want = 1;
		p = xed_barrier_map(want, 4096, PROT_WRITE, MAP_SHARED | MAP_FIXED, b.memfd);
		CHECK((void *)p == want && p[0] == XED_PCI_BARRIER_IDLE);
		p[0] = 5;
		CHECK(p[0] == XED_PCI_BARRIER_IDLE);
		counted(&b, 1, "MAP_FIXED page");
		CHECK(xed_barrier_map(want, 4096, PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE,
				      b.memfd) == MAP_FAILED && errno == EEXIST);
		CHECK(xed_barrier_map(NULL, 8192, PROT_WRITE, MAP_SHARED, b.memfd) == MAP_FAILED &&
		      errno == EINVAL);
		CHECK(xed_barrier_map(NULL, 4096, PROT_WRITE, MAP_SHARED, -1) == MAP_FAILED &&
		      errno == EBADF);
	}
	barrier_look(&b); /* nothing left for the flush at exit to wait for */
	printf("ok %u barriers\n", expect);
	return 0;
}
