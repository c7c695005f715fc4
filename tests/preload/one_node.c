/*
 * one_node.c - under `xec run --node NODE` only NODE exists: the other is ENOENT
 * for stat and open, whatever the host has. argv[1] names the node that exists.
 */
#include "check.h"

#include <sys/stat.h>

int main(int argc, char **argv)
{
	CHECK(argc == 2);
	int card = !strcmp(argv[1], "card0");
	const char *have = card ? "/dev/dri/card0" : "/dev/dri/renderD128";
	const char *missing = card ? "/dev/dri/renderD128" : "/dev/dri/card0";
	struct stat st;
	CHECK_OK(stat(have, &st));
	CHECK_ERR(stat(missing, &st), ENOENT);
	CHECK_ERR(open(missing, O_RDWR), ENOENT);
	CHECK_ERR(access(missing, F_OK), ENOENT);
	int fd = open(have, O_RDWR);
	CHECK(fd >= 0);
	CHECK_OK(close(fd));
	return 0;
}
