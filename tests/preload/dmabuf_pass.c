/*
 * dmabuf_pass.c - a dma-buf sent from one program to another (both under `xec run`)
 * over a Unix socket. `dmabuf_pass send PATH` exports a BO holding a message and
 * sends the descriptor; `dmabuf_pass receive PATH` first uses the dma-buf alone (lseek
 * and mmap of a descriptor the library never handed out, before this program opened
 * any device), then opens the device, imports it and checks the message.
 */
#include "check.h"

#include <sys/socket.h>
#include <sys/un.h>


static const char message[] = "from the other program";

static int unix_socket(const char *path, int listen_too)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(s >= 0);
	if (listen_too) {
		CHECK_OK(bind(s, (struct sockaddr *)&sa, sizeof sa));
		CHECK_OK(listen(s, 1));
		printf("listening\n");
		fflush(stdout);
		int c = accept(s, NULL, NULL);
		CHECK(c >= 0);
		close(s);
		return c;
	}
	CHECK_OK(connect(s, (struct sockaddr *)&sa, sizeof sa));
	return s;
}

int main(int argc, char **argv)
{
	CHECK(argc == 3);
	int fd = -1;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	char byte = 'x';
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
			     .msg_controllen = sizeof u.buf};
	if (!strcmp(argv[1], "send")) {
		fd = open_card();
		uint32_t bo = bo_create(fd, 4096);
		char *cpu = bo_map(fd, bo, 4096);
		strcpy(cpu, message);
		struct drm_prime_handle ph = {.handle = bo, .flags = DRM_CLOEXEC | DRM_RDWR};
		CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph));
		int s = unix_socket(argv[2], 1);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET, cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &ph.fd, sizeof(int));
		CHECK(sendmsg(s, &msg, 0) == 1);
		CHECK(read(s, &byte, 1) == 1); /* the receiver is done */
		return 0;
	}
	int s = unix_socket(argv[2], 0);
	CHECK(recvmsg(s, &msg, 0) == 1);
	int buf;
	memcpy(&buf, CMSG_DATA(CMSG_FIRSTHDR(&msg)), sizeof(int));
	CHECK(lseek(buf, 0, SEEK_END) == 4096);
	char *view = mmap(NULL, 4096, PROT_READ, MAP_SHARED, buf, 0);
	CHECK(view != MAP_FAILED && !strcmp(view, message));
	fd = open_card();
	struct drm_prime_handle imp = {.fd = buf};
	CHECK_OK(ioctl(fd, DRM_IOCTL_PRIME_FD_TO_HANDLE, &imp));
	char *cpu = bo_map(fd, imp.handle, 4096);
	CHECK(!strcmp(cpu, message));
	CHECK(write(s, "k", 1) == 1);
	return 0;
}
