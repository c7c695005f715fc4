/*
 * open_errno.c - open(argv[1]) and print what came of it: "ok", or "errno N".
 */
#include "check.h"

int main(int argc, char **argv)
{
	CHECK(argc == 2);
	int fd = open(argv[1], O_RDWR);
	if (fd < 0) {
		printf("errno %d\n", errno);
		return 0;
	}
	printf("ok\n");
	CHECK_OK(close(fd));
	return 0;
}
