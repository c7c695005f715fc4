/*
 * preload.h - what the preload library's modules share.
 *
 * One drm file (an open of /dev/dri/card0 or renderD128) is one connection to the
 * daemon; the descriptor the program holds is that connection. `struct xed_file` is
 * the library's record of it in this process: which node, the token that lets another
 * connection (a channel) act on the same file, and the connections this process talks
 * on. Modules: sys (libc without recursion), usermem (the program's memory, never
 * faulting), wire (msgpack), conn (talking to the daemon), files (the fd table), node
 * (paths), stat, debugfs, ioctl/syncobj/xe_ioctl/xe_exec/query (translation), mmap,
 * eventfd (SYNCOBJ_EVENTFD), dmabuf, syncfile (a sync file's ioctls), sw_sync
 * (validation timelines), config, sock and xcall (one request on one connection),
 * notice (the device's notice page), unplug (mappings falling onto zero pages when the
 * device goes), userptr (the program's own memory bound as a userptr) and procmaps
 * (/proc/self/maps); and the barrier page (barrier.c, signals.c: see barrier.h).
 */
#ifndef XED_PRELOAD_H
#define XED_PRELOAD_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "uapi.h"
#include "wire.h"

/* marks a libc function the library stands in for; exports.map is what exports it */
#define XED_EXPORT __attribute__((visibility("default")))

#define PAGE 4096ul /* the host's page: what mappings and the kernel's checks go by */
#define ROUND(len) (((uint64_t)(len) + PAGE - 1) & ~(PAGE - 1)) /* up to whole pages */

enum xed_node { XED_NODE_PRIMARY = 0, XED_NODE_RENDER = 1 };
#define XED_DRM_MAJOR 226
#define XED_TOKEN_MAX 64
#define XED_CHANNELS 16

/* one connection this process may talk on; used by one caller at a time */
struct xed_chan {
	atomic_int state; /* CHAN_EMPTY / CHAN_IDLE / CHAN_BUSY */
	int fd;
	uint8_t *buf; /* XED_CHAN_BUF bytes: the request, then the reply */
};

struct xed_notice;

struct xed_file {
	atomic_int refs;  /* fd-table entries in this process + calls in flight; 0: free */
	int node;	  /* enum xed_node */
	pid_t owner;	  /* the process whose io connection is the file's own */
	struct xed_chan io; /* the file's own connection (a private copy of the program's fd) */
	char token[XED_TOKEN_MAX];
	struct xed_chan chans[XED_CHANNELS]; /* channels: other threads, forked children */
	atomic_int spare; /* a forked child's connection made at the fork, not greeted yet */
	struct xed_notice *_Atomic notice; /* its device's (notice.c): NULL until asked for */
	_Atomic uint64_t host_base; /* where the daemon put userptr.c's arena; 0: not yet */
};

/* --- configuration (environment, read once) ------------------------------------------ */
struct xed_config {
	char socket[108];
	int nodes;		/* bit per enum xed_node: which device nodes exist */
	char debugfs[256];	/* directory serving /sys/kernel/debug, or "" */
	int debug;		/* XED_PRELOAD_DEBUG: say on stderr why calls fail */
};
const struct xed_config *xed_config(void);
extern pid_t xed_pid; /* this process's pid, kept current across fork */
void xed_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* --- ranges of the program's address space, kept in the library's tables ------------- */
/* [addr, addr+len), and where `off` (an offset its first byte stands for) goes with it */
struct span {
	uint64_t addr, len, off;
};
/* Cut [addr, addr+len) out of *s: 0 if they do not meet; else 1, with *s the part left
 * before the cut and *tail the part after it (either may be empty: len 0). */
static inline int span_cut(struct span *s, uint64_t addr, uint64_t len, struct span *tail)
{
	uint64_t end = s->addr + s->len, lo = addr > s->addr ? addr : s->addr;
	uint64_t hi = addr + len < end ? addr + len : end;
	if (lo >= hi)
		return 0;
	*tail = (struct span){hi, end - hi, s->off + (hi - s->addr)};
	s->len = lo - s->addr;
	return 1;
}

/* --- usermem.c: the program's memory, read and written without ever faulting -------- */
int copy_from_user(void *dst, uint64_t src, size_t n);	  /* 0 or EFAULT */
int copy_to_user(uint64_t dst, const void *src, size_t n); /* 0 or EFAULT */
/* a NUL-terminated string of at most max-1 bytes: its length, or -EFAULT/-ENAMETOOLONG */
long string_from_user(char *dst, const char *src, size_t max);

/* --- files.c: the fd table --------------------------------------------------------- */
enum fd_kind { FD_NONE = 0, FD_DRM = 1, FD_DMABUF = 2, FD_TIMELINE = 3 };
struct xed_file *xf_alloc(int node);
struct xed_file *xf_get(int fd); /* a reference, or NULL if fd is no drm file of ours */
void xf_hold(struct xed_file *f);
void xf_put(struct xed_file *f);
int fd_kind(int fd);
void fd_install(int fd, struct xed_file *f); /* takes over a reference */
void fd_mark_dmabuf(int fd);
void fd_mark_timeline(int fd); /* a sw_sync timeline of the daemon's (sw_sync.c) */
void fd_forget(int fd); /* the descriptor was closed */
/* a drm file of this process to carry requests that need one (dma-buf ops, sw_sync);
 * with none open, one of the library's own, hidden and kept for the life of the process;
 * NULL (errno: why, ENODEV if no daemon answers) if none can be had */
struct xed_file *xf_any(void);
/* fn(f, arg) for each drm file of this process, a reference held across the call */
void xf_for_each(void (*fn)(struct xed_file *, void *), void *arg);
int xed_private_fd(int fd); /* move a descriptor of ours out of the program's way */
void files_after_fork(void);

/* --- sock.c: datagrams ------------------------------------------------------------ */
/* one datagram with nfds descriptors attached (each open, or EBADF): 0 or errno */
int send_frame(int fd, const void *data, size_t len, const int *fds, int nfds);
/* one datagram: its length (its descriptors in fds[], *nfds of them), or -errno */
long recv_frame(int fd, void *buf, size_t cap, int *fds, int *nfds);
long recv_queued(int fd, void *buf, size_t cap); /* a datagram already there, or -1 */

/* --- conn.c: requests and replies ---------------------------------------------------- */
#define XED_CHAN_BUF (2 * 65536)
#define XED_SEND_CAP (XED_CHAN_BUF / 2) /* the request half; the reply comes in the other */
struct xcall {
	struct xed_file *file;
	struct xed_chan *chan;
	int temporary; /* chan is `own`, a one-off channel closed after the call */
	struct xed_chan own;
	int op;
	struct wbuf w;
	size_t map_at; /* where the args map's count goes */
	uint32_t keys;
	struct rbuf body; /* the reply's result map (or ErrorInfo) */
	int fds[8];
	int nfds;
};
/* open a new drm file on `node`: the connection's descriptor (the program's), or -errno */
int xed_open_node(int node, int cloexec, struct xed_file **out);
int xc_begin(struct xcall *c, struct xed_file *f, int op); /* 0 or errno */
/* xc_begin on a one-off channel of f, whatever else is idle: a call that may wait long
 * (eventfd.c). c must stay where it is until xc_end; f is not used once this returns. */
int xc_begin_private(struct xcall *c, struct xed_file *f, int op);
/* a new call of `op` on the channel `c` holds, once its last call is answered */
void xc_again(struct xcall *c, int op);
void xc_key(struct xcall *c, const char *key);		  /* a top-level field follows */
void xc_u(struct xcall *c, const char *key, uint64_t v);
void xc_i(struct xcall *c, const char *key, int64_t v);
void xc_u64s(struct xcall *c, const char *key, const uint64_t *v, uint32_t n);
void xc_u16s(struct xcall *c, const char *key, const uint16_t *v, uint32_t n);
int xc_run(struct xcall *c, int fd_in); /* the reply's errno (0: success) */
/* xc_run with nfds descriptors attached, in that order (the daemon reads them as the op
 * lists them): the reply's errno; EBADF if one of them is not open */
int xc_run_fds(struct xcall *c, const int *fds, int nfds);
int xc_take_fd(struct xcall *c);	/* the reply's first descriptor, now the caller's */
int xc_take_new_fd(struct xcall *c); /* the same, a number the library knew nothing of */
void xc_end_fds(struct xcall *c);	/* close the reply's descriptors not taken */
void xc_end(struct xcall *c);
/* the whole call for an argument of a handle and a pad and no reply fields (GEM_CLOSE,
 * SYNCOBJ_DESTROY): 0 or errno */
int xc_handle_pad(struct xed_file *f, int op, uint32_t handle, uint32_t pad);
void conn_after_fork(struct xed_file *f); /* in the child: the parent's channels go */
void conn_release(struct xed_file *f);	  /* the file's last reference went */

/* --- node.c / debugfs.c: paths ------------------------------------------------------- */
enum path_kind {
	PATH_OTHER = 0,
	PATH_NODE,	/* /dev/dri/card0 or renderD128 (`node` says which) */
	PATH_DRI_DIR,	/* /dev/dri */
	PATH_PROC_FD,	/* /proc/self/fd/N and the like (`fd` says which) */
	PATH_DEBUGFS,	/* /sys/kernel/debug/..., host settings: served from the stand-in */
	PATH_MISSING,	/* a device node this run does not have */
};
struct path_info {
	int kind, node, fd;
	char mapped[4096 + 256]; /* PATH_DEBUGFS: the real path to use */
	int debugfs_top;	 /* 1: the debugfs root itself, 2: its parent (..) */
};
/* classify a path the program passed (a user pointer): 0, or -errno if unreadable */
int path_classify(const char *user_path, struct path_info *pi);
int debugfs_map(const char *path, struct path_info *pi);
int host_setting_map(const char *path, struct path_info *pi); /* 1: it is one (debugfs.c) */
void node_stat(int node, struct stat *st);
const char *node_path(int node);

/* --- ioctl.c / syncobj.c / xe_ioctl.c / query.c: translation ------------------------- */
int drm_ioctl(struct xed_file *f, int fd, unsigned long cmd, uint64_t arg); /* 0 or errno */
int xe_ioctl(struct xed_file *f, unsigned nr, void *kdata);		  /* 0 or errno */
int xe_query(struct xed_file *f, struct drm_xe_device_query *q);
int drm_version_ioctl(struct xed_file *f, void *kdata);
/* syncobj.c: DRM core's syncobj ioctls, binary and timeline (and their descriptors),
 * argument as ioctl.c framed it */
int drm_syncobj_create_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_destroy_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_wait_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_reset_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_signal_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_handle_to_fd_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_fd_to_handle_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_timeline_wait_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_query_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_transfer_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_timeline_signal_ioctl(struct xed_file *f, void *kdata);
int drm_syncobj_eventfd_ioctl(struct xed_file *f, void *kdata); /* eventfd.c */
void xe_reserved(struct xcall *c, const uint64_t *r, uint32_t n);
/* xe_ioctl.c: fills the begun call `c` with its argument, runs it, writes back */
int xe_exec_queue_get_property(struct xcall *c, struct drm_xe_exec_queue_get_property *a);
/* xe_exec.c: each fills the begun call `c` with its argument, runs it, writes back */
int xe_vm_bind(struct xcall *c, struct drm_xe_vm_bind *a);
int xe_exec_queue_create(struct xcall *c, struct drm_xe_exec_queue_create *a);
int xe_exec_queue_destroy(struct xcall *c, struct drm_xe_exec_queue_destroy *a);
int xe_exec(struct xcall *c, struct drm_xe_exec *a);
int xe_wait_user_fence(struct xcall *c, struct drm_xe_wait_user_fence *a);
/* ufence.c: user fences in plain memory, the library's to write and watch */
int ufence_is_local(struct xed_file *f, uint64_t addr);
int ufence_kept_back(struct xed_file *f, const struct drm_xe_sync *s, uint32_t n, uint32_t binds);
void ufence_signal(const struct drm_xe_sync *u);
int ufence_wait(struct xed_file *f, struct drm_xe_wait_user_fence *a);

/* --- mmap.c: mappings of device files ------------------------------------------------ */
/* a CPU address inside a mapping of `f`, as the daemon names user memory; 0 if none */
int user_address(struct xed_file *f, uint64_t addr, uint64_t *out);
/* mmap(2) of a memfd the daemon sent (at `at`) where and how the program asked, kept in
 * the table: a mapping of drm file f at fake offset `offset` (f NULL: a dma-buf's),
 * falling onto zero pages when n's device is unplugged (n NULL: never) */
void *maps_map(struct xed_file *f, uint64_t offset, struct xed_notice *n, void *addr,
	       size_t len, int prot, int flags, int memfd, off_t at);
/* pthread_atfork's three (config.c): no thread changes the table while the process
 * forks, and the child's forgets what it did not inherit */
void maps_before_fork(void);
void maps_after_fork_parent(void);
void maps_after_fork(void);
void maps_zap(void);   /* zero pages under every mapping of an unplugged device */
void maps_watch(void); /* a watcher for every device the table maps (after fork) */

/* --- procmaps.c: /proc/self/maps ------------------------------------------------------ */
enum seg_kind { SEG_OTHER, SEG_ANON, SEG_ARENA };
/* one mapping: anonymous (the heap, MAP_ANONYMOUS private or shared) or other (userptr.c
 * tells its arena apart by device and inode) */
struct seg {
	uint64_t lo, hi, off; /* off: the offset in its file (memfd) that lo maps */
	uint64_t dev, ino;
	int prot, shared, kind;
};
/* the mappings covering [lo, hi), clipped to it, in segs[]: their number, or -1 if there
 * is a hole, more than max pieces, or the file cannot be read */
int proc_maps(uint64_t lo, uint64_t hi, struct seg *segs, int max);
/* fn for every mapping, in address order, until it returns non-zero: that value, 0 once
 * every line is read, -1 if the file could not be read whole */
int proc_maps_each(int (*fn)(const struct seg *, void *), void *arg);

/* --- arena.c: which parts of the userptr arena are taken ----------------------------- */
int arena_table(uint64_t size); /* the table, shared with forked children: 0 or ENOMEM */
/* A slice for [addr, addr+len), with addr's alignment to 64 KiB: 0 and *slice (*reused:
 * some of it was taken before), or ENOMEM */
int arena_take(uint64_t addr, uint64_t len, uint64_t *slice, int *reused);
/* Give back what no mapping of this process reaches (the arena is memfd fd, dev:ino) and
 * what processes gone left unpinned; gone(off, len, arg) first for each of ours. The
 * number given back. */
int arena_collect(int fd, dev_t dev, ino_t ino, void (*gone)(uint64_t, uint64_t, void *),
		  void *arg);
/* As fork begins: pin each extent of ours for which shared(off, len, arg) says a child
 * may map it */
void arena_pin(int (*shared)(uint64_t, uint64_t, void *), void *arg);

/* --- userptr.c: MAP_USERPTR of the program's own memory ------------------------------ */
/* The obj_offset to send for bind o: for a MAP_USERPTR, the address its range has in
 * f's host memory, the memory moved there first if need be; else, or where it cannot
 * be, o's own (the daemon answers as for an address outside host memory: EFAULT) */
uint64_t userptr_obj_offset(struct xed_file *f, const struct drm_xe_vm_bind_op *o);
/* for a MAP_USERPTR bind o, the arena registered with f now, before a call on f begins:
 * registering from inside one would open a channel for it */
void userptr_register(struct xed_file *f, const struct drm_xe_vm_bind_op *o);
/* Around a munmap, MAP_FIXED mmap or mremap of [addr, addr+len): begin returns 1 (and
 * holds the table) if moved memory is there, reported about to change; end reports it
 * freed (`changed`) or as it was, and lets go of the table with `mask` */
int userptr_begin(uint64_t addr, uint64_t len, uint64_t *mask);
void userptr_end(uint64_t addr, uint64_t len, int changed, uint64_t mask);
/* A MAP_FIXED anonymous mmap over moved memory: the fresh memory asked for, with zeroed
 * pages of the arena under what was moved (still the device's to reach), and addr (or
 * MAP_FAILED and errno); NULL where no moved memory is there */
void *userptr_fresh(void *addr, size_t len, int prot, int flags);
void userptr_before_fork(void);
void userptr_after_fork_parent(void);
void userptr_after_fork(void); /* in the child: private memory is private again */

/* --- notice.c: the device's notice page -------------------------------------------- */
/* One device (one plug-in) as this process met it, never freed: its notice page, mapped
 * read-only for good (word 0 turns XED_NOTICE_UNPLUGGED at the unplug; the page
 * watcher's asleep word is at XED_NOTICE_WATCHER_ASLEEP), and the watcher waiting on it. */
struct xed_notice {
	const _Atomic uint32_t *page;
	_Atomic unsigned watcher; /* unplug.c: which process's watcher waits (its epoch) */
};
/* f's device's notice, asked for once per file; NULL and errno if the daemon did not hand
 * it over (ENODEV: the device is unplugged already) */
struct xed_notice *notice_get(struct xed_file *f);
void notice_after_fork(void);

/* --- unplug.c: the device's unplug under the program's mappings --------------------- */
void unplug_watch(struct xed_notice *n); /* n's watcher runs in this process from now on */
void unplug_after_fork(void);		  /* in the child: watchers for what it inherited */

/* --- dmabuf.c ---------------------------------------------------------------------- */
int dmabuf_is(int fd); /* 1 if fd is a dma-buf of an xed daemon (asked once per fd) */
int dmabuf_ioctl(int fd, unsigned long cmd, uint64_t arg);
int dmabuf_mmap(int fd, void *addr, size_t len, int prot, int flags, off_t off, void **out);

/* --- syncfile.c -------------------------------------------------------------------- */
/* a sync file ioctl ('>') on a descriptor that is no drm file: 0 or errno; ENOTTY when
 * it is none of the daemon's sync files (or no daemon answers): the kernel's to answer */
int sync_file_ioctl(int fd, unsigned long cmd, uint64_t arg);

/* --- sw_sync.c --------------------------------------------------------------------- */
/* open(2) of a debugfs path, mapped into the stand-in: a new timeline if it is its
 * sync/sw_sync, else that file opened; the descriptor, or -1 and errno */
int sw_sync_open(const char *mapped, int flags, mode_t mode);
/* a sw_sync ioctl ('W') on a descriptor that is no drm file: 0 or errno; ENOTTY when it
 * is none of the daemon's timelines (or no daemon answers): the kernel's to answer */
int sw_sync_ioctl(int fd, unsigned long cmd, uint64_t arg);
uint64_t sw_sync_ino(int fd); /* a timeline descriptor's inode, before its close; 0: none */
void sw_sync_closed(uint64_t ino); /* after it: the daemon releases it if that was the last */

#endif /* XED_PRELOAD_H */
