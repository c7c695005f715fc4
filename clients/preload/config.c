/*
 * config.c - what the environment says (set by `xec run`), read once, and the state
 * every module needs from the start: this process's pid, kept current across fork.
 *
 * The library may be called before its constructor runs (another library's
 * constructor opening a file) and from several threads at once: pthread_once makes
 * the first caller, whoever it is, read the environment.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static void init(void)
{
	const char *s = getenv("XED_SOCKET");
	const char *run = getenv("XDG_RUNTIME_DIR");
	if (s && *s)
		snprintf(config.socket, sizeof config.socket, "%s", s);
	else if (run && *run)
		snprintf(config.socket, sizeof config.socket, "%s/xed/xed.sock", run);
	else
		snprintf(config.socket, sizeof config.socket, "/run/xed/xed.sock");
	const char *nodes = getenv("XED_PRELOAD_NODES");
	if (!nodes || !*nodes)
		config.nodes = 1 << XED_NODE_PRIMARY | 1 << XED_NODE_RENDER;
	else {
		config.nodes = strstr(nodes, "card0") ? 1 << XED_NODE_PRIMARY : 0;
		config.nodes |= strstr(nodes, "renderD128") ? 1 << XED_NODE_RENDER : 0;
	}
	const char *dbg = getenv("XED_PRELOAD_DEBUGFS");
	if (dbg)
		snprintf(config.debugfs, sizeof config.debugfs, "%s", dbg);
	config.debug = getenv("XED_PRELOAD_DEBUG") != NULL;
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
