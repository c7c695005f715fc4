/*
 * config.c - what the environment says (set by `xec run`), read once, and the state
 * every module needs from the start: this process's pid, kept current across fork.
 *
 * The library may be called before its constructor runs (another library's
 * constructor opening a file, or the program's .preinit_array, before the C library
 * has set environ) and from several threads at once: pthread_once makes the first
 * caller, whoever it is, read the environment.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"
#include "sys.h"

/* --- configuration ------------------------------------------------------------------ */
pid_t xed_pid;
static struct xed_config config;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void after_fork_child(void)
{
	xed_pid = (pid_t)syscall(SYS_getpid);
	files_after_fork();
	maps_after_fork();
	userptr_after_fork();
	notice_after_fork();
	unplug_after_fork(); /* last: its watchers find the table as the child has it */
}

/* the userptr table before the mappings' table: the order userptr.c takes them in */
static void before_fork(void)
{
	userptr_before_fork();
	maps_before_fork();
}

static void after_fork_parent(void)
{
	maps_after_fork_parent();
	userptr_after_fork_parent();
}

/*
 * The environment, where environ is not set yet: a program's .preinit_array functions
 * run before the C library's initializer sets it, and may already open a file through
 * us. The kernel's copy of what exec was given holds the same (its first 128 KiB).
 */
static char exec_env[(128 << 10) + 1];
static long exec_env_len = -1;

static const char *env(const char *name)
{
	if (environ)
		return getenv(name);
	if (exec_env_len < 0) {
		exec_env_len = 0;
		int fd = sys_openat(AT_FDCWD, "/proc/self/environ", O_RDONLY | O_CLOEXEC, 0);
		while (fd >= 0 && exec_env_len < (long)sizeof exec_env - 1) {
			long got = syscall(SYS_read, fd, exec_env + exec_env_len,
					   sizeof exec_env - 1 - exec_env_len);
			if (got <= 0)
				break;
			exec_env_len += got;
		}
		if (fd >= 0)
			sys_close(fd);
	}
	size_t n = strlen(name);
	for (char *p = exec_env; p < exec_env + exec_env_len; p += strlen(p) + 1)
		if (!strncmp(p, name, n) && p[n] == '=')
			return p + n + 1;
	return NULL;
}

static void init(void)
{
	const char *s = env("XED_SOCKET");
	const char *run = env("XDG_RUNTIME_DIR");
	if (s && *s)
		snprintf(config.socket, sizeof config.socket, "%s", s);
	else if (run && *run)
		snprintf(config.socket, sizeof config.socket, "%s/xed/xed.sock", run);
	else
		snprintf(config.socket, sizeof config.socket, "/run/xed/xed.sock");
	const char *nodes = env("XED_PRELOAD_NODES");
	if (!nodes || !*nodes)
		config.nodes = 1 << XED_NODE_PRIMARY | 1 << XED_NODE_RENDER;
	else {
		config.nodes = strstr(nodes, "card0") ? 1 << XED_NODE_PRIMARY : 0;
		config.nodes |= strstr(nodes, "renderD128") ? 1 << XED_NODE_RENDER : 0;
	}
	const char *dbg = env("XED_PRELOAD_DEBUGFS");
	if (dbg)
		snprintf(config.debugfs, sizeof config.debugfs, "%s", dbg);
	config.debug = env("XED_PRELOAD_DEBUG") != NULL;
	xed_pid = (pid_t)syscall(SYS_getpid);
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

const struct xed_config *xed_config(void)
{
	pthread_once(&once, init);
	return &config;
}

__attribute__((constructor)) static void xed_preload_init(void) { xed_config(); }

void xed_log(const char *fmt, ...)
{
	if (!xed_config()->debug)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof line - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof line - 2)
		n = sizeof line - 2;
	line[n++] = '\n';
	syscall(SYS_write, 2, "xed-preload: ", 13ul);
	syscall(SYS_write, 2, line, (size_t)n);
}
