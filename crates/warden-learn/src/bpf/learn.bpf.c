// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Warden learning mode: the kernel half.
//
// Every system call that fails with EACCES or EPERM in a tracked process is
// reported to the owning session's ring buffer with its syscall number, its
// arguments and the paths it named, resolved to absolute paths in the kernel
// (directory fd or cwd dentry chain walked up to the task's root). The
// return value is tested first, so a call that succeeds costs one compare.
//
// Tracking: `tracked` maps a tgid to its session slot, the session's
// generation and the process's start time (USER_HZ ticks, as
// /proc/PID/stat shows it). Every use checks the start time against the
// task's, so an entry left behind by an exited process never matches the
// process that later gets its pid. Forks of a tracked process are tracked
// too; a tracked process that execs something that raises its privileges
// (setuid, setgid, file capabilities) leaves the capture.
//
// Each session has its own ring buffer (an inner map of `session_rb`), so a
// noisy session cannot crowd out another's events.
//
// Pids: the tracking table and every record use pids as the broker's pid
// namespace numbers them (`wl_config.pidns_ino`), so a broker in a container
// (systemd-nspawn) tracks the pids it was given and reports pids its
// callers understand. A task is translated through its `struct pid`'s
// `numbers[]`, at the level of the broker's namespace; a task with no
// number there (outside the broker's namespace) is never tracked.
//
// Privacy: for non-root callers (WL_FLAG_DUMPABLE), a process that is not
// dumpable (it exec'd an unreadable binary, or called
// prctl(PR_SET_DUMPABLE, 0)) leaves the capture before anything is read
// from its memory: the caller could not read it with a debugger either.
//
// The tracking table is shared; each uid gets a share of it
// (`max_tracked_per_uid`, in `limits`). `shares` counts, per session slot,
// the entries the session holds and the uid it counts against; a child
// that would take its uid past the share is not tracked (counted in
// `untracked_share`), so one user's forks cannot crowd out another's.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#include "learn.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define EPERM 1
#define EACCES 13
#define AT_FDCWD -100
#define AF_UNIX 1
#define NSEC_PER_TICK 10000000ULL /* 1e9 / USER_HZ (100) */

struct tracked {
	__u32 slot;
	__u32 gen;
	__u64 start_ticks;
	__u32 uid;
	__u32 flags;
};

/* Sessions that record accesses (user space keeps it current). While 0, a
 * successful syscall costs one load and one compare. */
__u32 accesses_active = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WL_MAX_TRACKED);
	__type(key, __u32);
	__type(value, struct tracked);
} tracked SEC(".maps");

struct session_stats {
	__u64 events;
	__u64 lost;
	__u64 stale;
	__u64 untracked_full;
	__u64 untracked_share; /* children past the uid's share of `tracked` */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WL_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct session_stats);
} stats SEC(".maps");

/* A session slot's part of the tracking table (written by user space when
 * the session starts and stops; the counter is kept by the programs). */
struct share {
	__s64 tracked; /* entries of this session in `tracked` */
	__u32 owner;   /* the uid whose share they count against */
	__u32 gen;     /* the session's generation; 0: slot unused */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WL_MAX_SESSIONS);
	__type(key, __u32);
	__type(value, struct share);
} shares SEC(".maps");

struct wl_limits {
	__u32 max_tracked_per_uid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_limits);
} limits SEC(".maps");

struct ringbuf_inner {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, WL_RINGBUF_BYTES);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, WL_MAX_SESSIONS);
	__type(key, __u32);
	__array(values, struct ringbuf_inner);
} session_rb SEC(".maps");

/* Files a session has already reported an access to: (generation,
 * dentry, mode). An LRU, so a long capture forgets old entries instead of
 * failing; a forgotten file is just reported again. */
struct seen_key {
	__u64 dentry;
	__u32 gen;
	__u32 mode;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct seen_key);
	__type(value, __u8);
} seen SEC(".maps");

/* The broker's pid namespace; written once by user space before the
 * programs are attached. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wl_config);
} wl_config SEC(".maps");

/* `pid`'s number in the broker's pid namespace, or 0 when it has none
 * (the task belongs to an enclosing or unrelated namespace). Searches the
 * levels the pid has, since the broker does not know its own level from
 * inside a container; the broker's namespace is at most `pid->level`. */
static __always_inline __u32 nr_in_broker_ns(struct pid *pid)
{
	struct wl_config *cfg;
	__u32 zero = 0;
	unsigned int level;
	__u64 base, size;
	__u32 i;

	cfg = bpf_map_lookup_elem(&wl_config, &zero);
	if (!cfg || !pid)
		return 0;
	level = BPF_CORE_READ(pid, level);
	base = (__u64)pid + bpf_core_field_offset(struct pid, numbers);
	size = bpf_core_type_size(struct upid);
	for (i = 0; i <= WL_MAX_PID_LEVEL; i++) {
		struct upid up = {};

		if (i > level)
			break;
		if (bpf_probe_read_kernel(&up, sizeof(up), (void *)(base + i * size)))
			return 0;
		if (BPF_CORE_READ(up.ns, ns.inum) == cfg->pidns_ino)
			return up.nr;
	}
	return 0;
}

/* The process (thread group) id of `task` in the broker's namespace. */
static __always_inline __u32 ns_tgid(struct task_struct *task)
{
	return nr_in_broker_ns(BPF_CORE_READ(task, group_leader, thread_pid));
}

/* The thread id of `task` in the broker's namespace. */
static __always_inline __u32 ns_tid(struct task_struct *task)
{
	return nr_in_broker_ns(BPF_CORE_READ(task, thread_pid));
}

/* mm_struct.flags, both layouts: an unsigned long up to 6.17, an
 * mm_flags_t bitmap (its first word holds the same low bits) since. */
struct mm_struct___flags_ulong {
	unsigned long flags;
} __attribute__((preserve_access_index));

struct mm_struct___flags_bitmap {
	mm_flags_t flags;
} __attribute__((preserve_access_index));

#define MMF_DUMPABLE_MASK 3 /* MMF_DUMPABLE_BITS 2: the low two bits */
#define SUID_DUMP_USER 1

/* get_dumpable(task->mm): 0 (SUID_DUMP_DISABLE), 1 (SUID_DUMP_USER), 2
 * (SUID_DUMP_ROOT); -1 for a task without an mm. */
static __always_inline int dumpable_of(struct task_struct *task)
{
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long flags = 0;

	if (!mm)
		return -1;
	if (bpf_core_field_exists(((struct mm_struct___flags_bitmap *)0)->flags.__mm_flags)) {
		struct mm_struct___flags_bitmap *m = (void *)mm;

		bpf_core_read(&flags, sizeof(flags), &m->flags.__mm_flags[0]);
	} else {
		struct mm_struct___flags_ulong *m = (void *)mm;

		bpf_core_read(&flags, sizeof(flags), &m->flags);
	}
	return flags & MMF_DUMPABLE_MASK;
}

/* True when a session of a non-root caller must let `task` go: it is not
 * dumpable, so its memory is not the caller's to read. */
static __always_inline int must_leave_non_dumpable(struct tracked *t, struct task_struct *task)
{
	int d;

	if (!(t->flags & WL_FLAG_DUMPABLE))
		return 0;
	d = dumpable_of(task);
	return d >= 0 && d != SUID_DUMP_USER;
}

static __always_inline struct session_stats *stats_of(__u32 slot)
{
	return bpf_map_lookup_elem(&stats, &slot);
}

struct share_sum {
	__u32 owner;
	__s64 sum;
};

static long add_share(__u32 index, struct share_sum *c)
{
	struct share *s = bpf_map_lookup_elem(&shares, &index);

	if (s && s->gen && s->owner == c->owner)
		c->sum += s->tracked;
	return 0;
}

/* Counts one more entry for `t`'s session, if its uid stays within its
 * share of the table. Returns 1 if counted, 0 if over the share, -1 if the
 * session is gone (the caller then tracks nothing). Counting first and
 * checking after keeps concurrent forks from overshooting together. */
static __always_inline int share_claim(struct tracked *t)
{
	__u32 slot = t->slot, zero = 0;
	struct share *s = bpf_map_lookup_elem(&shares, &slot);
	struct wl_limits *lim = bpf_map_lookup_elem(&limits, &zero);
	struct share_sum c = {};

	if (!s || !lim || s->gen != t->gen)
		return -1;
	__sync_fetch_and_add(&s->tracked, 1);
	c.owner = s->owner;
	bpf_loop(WL_MAX_SESSIONS, add_share, &c, 0);
	if (c.sum > lim->max_tracked_per_uid) {
		__sync_fetch_and_add(&s->tracked, -1);
		return 0;
	}
	return 1;
}

/* One entry of `t`'s session left the table. */
static __always_inline void share_release(struct tracked *t)
{
	__u32 slot = t->slot;
	struct share *s = bpf_map_lookup_elem(&shares, &slot);

	if (s && s->gen == t->gen)
		__sync_fetch_and_add(&s->tracked, -1);
}

static __always_inline __u64 start_ticks_of(struct task_struct *task)
{
	__u64 ns = BPF_CORE_READ(task, group_leader, start_boottime);
	return ns / NSEC_PER_TICK;
}

static __always_inline void *reserve(struct tracked *t, __u64 size)
{
	__u32 slot = t->slot;
	void *rb = bpf_map_lookup_elem(&session_rb, &slot);
	struct session_stats *s = stats_of(slot);
	void *e;

	if (!rb)
		return 0;
	e = bpf_ringbuf_reserve(rb, size, 0);
	if (s) {
		if (e)
			__sync_fetch_and_add(&s->events, 1);
		else
			__sync_fetch_and_add(&s->lost, 1);
	}
	return e;
}

static __always_inline void fill_header(struct wl_header *h, __u32 kind, struct tracked *t,
					 struct task_struct *task)
{
	h->kind = kind;
	h->gen = t->gen;
	h->tgid = ns_tgid(task);
	h->tid = ns_tid(task);
	h->ktime_ns = bpf_ktime_get_ns();
	h->uid = BPF_CORE_READ(task, cred, uid.val);
	h->euid = BPF_CORE_READ(task, cred, euid.val);
	BPF_CORE_READ_STR_INTO(&h->comm, task, comm);
}

/* Scratch space for a directory walk (one per CPU: tracing programs run
 * with migration disabled and ours do not nest). */
struct dir_scratch {
	char buf[WL_DIR_BYTES + WL_NAME_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dir_scratch);
} scratch SEC(".maps");

struct walk_ctx {
	__u64 dentry;
	__u64 vfsmnt;
	__u64 root_dentry;
	__u64 root_mnt;
	__u32 off;
	__u32 state;
};

/* One level of the walk (a bpf_loop callback, so the verifier checks it
 * once instead of once per level). Returns 1 to stop. */
static long walk_step(__u32 index, struct walk_ctx *c)
{
	struct dentry *dentry = (struct dentry *)c->dentry;
	struct vfsmount *vfsmnt = (struct vfsmount *)c->vfsmnt;
	struct dir_scratch *s;
	struct dentry *parent;
	const unsigned char *name;
	__u32 zero = 0;
	long n;

	if (!dentry || !vfsmnt)
		return 1;
	if (c->dentry == c->root_dentry && c->vfsmnt == c->root_mnt) {
		c->state = WL_DIR_COMPLETE;
		return 1;
	}
	if (dentry == BPF_CORE_READ(vfsmnt, mnt_root)) {
		struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
		struct mount *up = BPF_CORE_READ(mnt, mnt_parent);

		if (up == mnt) {
			/* The root of the whole tree. */
			c->state = WL_DIR_COMPLETE;
			return 1;
		}
		c->dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		c->vfsmnt = (__u64)&up->mnt;
		return 0;
	}
	parent = BPF_CORE_READ(dentry, d_parent);
	if (parent == dentry) {
		/* A tree not reachable from the root (lazily unmounted). */
		c->state = WL_DIR_DETACHED;
		return 1;
	}
	if (c->off > WL_DIR_BYTES - WL_NAME_MAX) {
		c->state = WL_DIR_TRUNCATED;
		return 1;
	}
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 1;
	name = BPF_CORE_READ(dentry, d_name.name);
	n = bpf_probe_read_kernel_str(&s->buf[c->off & (WL_DIR_BYTES - 1)], WL_NAME_MAX, name);
	if (n <= 0) {
		c->state = WL_DIR_TRUNCATED;
		return 1;
	}
	c->off += n;
	c->dentry = (__u64)parent;
	return 0;
}

/* Walks from (dentry, vfsmount) up to the task's root, writing the names
 * leaf first, each NUL-terminated, into p->dir. Sets p->dir_len and
 * p->dir_state. */
static __noinline int walk_dir(struct wl_path *p, struct dentry *dentry, struct vfsmount *vfsmnt,
			       struct task_struct *task)
{
	struct walk_ctx c = {};
	struct dir_scratch *s;
	__u32 zero = 0;

	if (!p)
		return 0;
	c.dentry = (__u64)dentry;
	c.vfsmnt = (__u64)vfsmnt;
	c.root_dentry = (__u64)BPF_CORE_READ(task, fs, root.dentry);
	c.root_mnt = (__u64)BPF_CORE_READ(task, fs, root.mnt);
	/* Exhausting the depth leaves the walk truncated. */
	c.state = WL_DIR_TRUNCATED;
	bpf_loop(WL_MAX_DEPTH, walk_step, &c, 0);
	s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	bpf_probe_read_kernel(p->dir, sizeof(p->dir), s->buf);
	p->dir_len = c.off;
	p->dir_state = c.state;
	return 0;
}

/* A path slot that names nothing yet (ring-buffer memory is not zeroed). */
static __always_inline void path_init(struct wl_path *p)
{
	p->dirfd = 0;
	p->name_len = 0;
	p->dir_len = 0;
	p->used = 0;
	p->name_state = WL_NAME_NONE;
	p->dir_state = WL_DIR_NONE;
	p->pad = 0;
}

static __always_inline unsigned long arg_of(struct pt_regs *regs, int i)
{
	switch (i) {
	case 0:
		return BPF_CORE_READ(regs, di);
	case 1:
		return BPF_CORE_READ(regs, si);
	case 2:
		return BPF_CORE_READ(regs, dx);
	case 3:
		return BPF_CORE_READ(regs, r10);
	case 4:
		return BPF_CORE_READ(regs, r8);
	default:
		return BPF_CORE_READ(regs, r9);
	}
}

/* Resolves the file behind `fd` in `task`'s table: its dentry and mount. */
static __always_inline int file_of_fd(struct task_struct *task, int fd, struct dentry **dentry,
				      struct vfsmount **mnt)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;
	unsigned int max;

	if (!fdt || fd < 0)
		return -1;
	max = BPF_CORE_READ(fdt, max_fds);
	if ((unsigned int)fd >= max)
		return -1;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return -1;
	*dentry = BPF_CORE_READ(f, f_path.dentry);
	*mnt = BPF_CORE_READ(f, f_path.mnt);
	return 0;
}

/* Fills one path slot: the string the caller passed (user memory) and,
 * when it is relative, the directory it is relative to. `dirfd_arg` < 0
 * means "relative to the cwd"; `name_arg` < 0 means the slot names the
 * file behind the fd itself (fchmod, ftruncate...). */
static __noinline int fill_path(struct wl_path *p, struct pt_regs *regs, struct task_struct *task,
				int dirfd_arg, int name_arg)
{
	struct dentry *dentry = 0;
	struct vfsmount *mnt = 0;
	int dirfd = AT_FDCWD;
	long n = 0;

	if (!p)
		return 0;
	p->used = 1;
	if (name_arg >= 0) {
		const char *user = (const char *)arg_of(regs, name_arg);

		n = bpf_probe_read_user_str(p->name, sizeof(p->name), user);
		if (n < 0) {
			p->name_state = WL_NAME_UNREADABLE;
			return 0;
		}
		p->name_len = n;
		p->name_state = n >= (long)sizeof(p->name) ? WL_NAME_TRUNCATED : WL_NAME_OK;
		if (n > 0 && p->name[0] == '/')
			return 0;
	}
	if (dirfd_arg >= 0)
		dirfd = (int)arg_of(regs, dirfd_arg);
	p->dirfd = dirfd;
	if (dirfd == AT_FDCWD) {
		dentry = BPF_CORE_READ(task, fs, pwd.dentry);
		mnt = BPF_CORE_READ(task, fs, pwd.mnt);
	} else if (file_of_fd(task, dirfd, &dentry, &mnt)) {
		p->dir_state = WL_DIR_BAD_FD;
		return 0;
	}
	walk_dir(p, dentry, mnt, task);
	return 0;
}

/* The sun_path of a Unix socket address, with the cwd when relative. */
static __noinline int fill_sockaddr(struct wl_path *p, struct pt_regs *regs,
				    struct task_struct *task)
{
	const char *user = (const char *)arg_of(regs, 1);
	unsigned long len = arg_of(regs, 2);
	__u16 family = 0;
	long n;

	if (!p || len < 3)
		return 0;
	if (bpf_probe_read_user(&family, sizeof(family), user) || family != AF_UNIX)
		return 0;
	p->used = 1;
	/* Abstract sockets start with a NUL: report them with a leading '@'. */
	n = bpf_probe_read_user_str(p->name, sizeof(p->name), user + 2);
	if (n == 1) {
		p->name[0] = '@';
		n = bpf_probe_read_user_str(&p->name[1], sizeof(p->name) - 1, user + 3);
		if (n < 0)
			n = 0;
		n += 1;
		p->name_len = n;
		p->name_state = WL_NAME_ABSTRACT;
		return 0;
	}
	if (n < 0) {
		p->name_state = WL_NAME_UNREADABLE;
		return 0;
	}
	p->name_len = n;
	p->name_state = WL_NAME_OK;
	if (p->name[0] != '/') {
		struct dentry *dentry = BPF_CORE_READ(task, fs, pwd.dentry);
		struct vfsmount *mnt = BPF_CORE_READ(task, fs, pwd.mnt);

		p->dirfd = AT_FDCWD;
		walk_dir(p, dentry, mnt, task);
	}
	return 0;
}

/* Argument layout of the syscalls we decode (x86-64 numbers). */
struct layout {
	__s8 dir0, name0; /* first path: dirfd arg, name arg (-1: none) */
	__s8 dir1, name1; /* second path */
	__s8 fd;          /* the file behind this fd arg is the target */
	__s8 sock;        /* connect/bind sockaddr */
	__s8 pid;         /* target pid arg */
	__s8 known;
};

static __always_inline struct layout layout_of(long nr)
{
	struct layout l = { -1, -1, -1, -1, -1, -1, -1, 1 };

	switch (nr) {
	case 2:   /* open */
	case 4:   /* stat */
	case 6:   /* lstat */
	case 21:  /* access */
	case 59:  /* execve */
	case 76:  /* truncate */
	case 80:  /* chdir */
	case 83:  /* mkdir */
	case 84:  /* rmdir */
	case 85:  /* creat */
	case 87:  /* unlink */
	case 89:  /* readlink */
	case 90:  /* chmod */
	case 92:  /* chown */
	case 94:  /* lchown */
	case 132: /* utime */
	case 133: /* mknod */
	case 161: /* chroot */
	case 188: /* setxattr */
	case 189: /* lsetxattr */
	case 191: /* getxattr */
	case 192: /* lgetxattr */
	case 194: /* listxattr */
	case 195: /* llistxattr */
	case 197: /* removexattr */
	case 198: /* lremovexattr */
	case 235: /* utimes */
		l.name0 = 0;
		break;
	case 257: /* openat */
	case 437: /* openat2 */
	case 258: /* mkdirat */
	case 259: /* mknodat */
	case 260: /* fchownat */
	case 261: /* futimesat */
	case 262: /* newfstatat */
	case 263: /* unlinkat */
	case 267: /* readlinkat */
	case 268: /* fchmodat */
	case 452: /* fchmodat2 */
	case 269: /* faccessat */
	case 439: /* faccessat2 */
	case 280: /* utimensat */
	case 322: /* execveat */
	case 332: /* statx */
	case 463: /* setxattrat */
	case 464: /* getxattrat */
		l.dir0 = 0;
		l.name0 = 1;
		break;
	case 82: /* rename */
	case 86: /* link */
		l.name0 = 0;
		l.name1 = 1;
		break;
	case 88: /* symlink(target, linkpath): the link is what is created */
		l.name0 = 1;
		break;
	case 264: /* renameat */
	case 265: /* linkat */
	case 316: /* renameat2 */
		l.dir0 = 0;
		l.name0 = 1;
		l.dir1 = 2;
		l.name1 = 3;
		break;
	case 266: /* symlinkat(target, newdirfd, linkpath) */
		l.dir0 = 1;
		l.name0 = 2;
		break;
	case 77:  /* ftruncate */
	case 81:  /* fchdir */
	case 91:  /* fchmod */
	case 93:  /* fchown */
	case 190: /* fsetxattr */
	case 193: /* fgetxattr */
	case 196: /* flistxattr */
	case 199: /* fremovexattr */
		l.fd = 0;
		break;
	case 42: /* connect */
	case 49: /* bind */
		l.sock = 1;
		break;
	case 62:  /* kill */
	case 200: /* tkill */
		l.pid = 0;
		break;
	case 234: /* tgkill */
		l.pid = 0;
		break;
	case 101: /* ptrace(request, pid) */
		l.pid = 1;
		break;
	default:
		l.known = 0;
		break;
	}
	return l;
}

/* Drops `tgid` from the capture and tells the session why. */
static __always_inline void leave(__u32 tgid, struct tracked *t, struct task_struct *task,
				  __u32 why)
{
	struct tracked copy = *t;
	struct wl_left *e;

	if (!bpf_map_delete_elem(&tracked, &tgid))
		share_release(&copy);
	e = reserve(&copy, sizeof(*e));
	if (!e)
		return;
	fill_header(&e->h, WL_EV_LEFT, &copy, task);
	e->reason = why;
	bpf_ringbuf_submit(e, 0);
}

#define O_ACCMODE 3
#define O_CREAT 0100
#define O_DIRECTORY 0200000

/* A successful open in a session that records accesses: report the first
 * open of each (file, mode). */
static __noinline int on_open(struct pt_regs *regs, long nr, long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = ns_tgid(task);
	struct tracked *t;
	struct wl_access *e;
	struct seen_key key = {};
	struct dentry *dentry = 0;
	struct vfsmount *mnt = 0;
	__u64 flags = 0;
	__u8 one = 1;

	if (!tgid)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &tgid);
	if (!t || !(t->flags & WL_FLAG_ACCESSES))
		return 0;
	if (start_ticks_of(task) != t->start_ticks)
		return 0;
	if (must_leave_non_dumpable(t, task)) {
		leave(tgid, t, task, WL_LEFT_NON_DUMPABLE);
		return 0;
	}
	if (nr == 2)
		flags = BPF_CORE_READ(regs, si);
	else if (nr == 257)
		flags = BPF_CORE_READ(regs, dx);
	else if (nr == 437)
		bpf_probe_read_user(&flags, sizeof(flags), (void *)BPF_CORE_READ(regs, dx));
	else /* creat */
		flags = O_CREAT | 1;
	if (file_of_fd(task, (int)fd, &dentry, &mnt))
		return 0;
	key.dentry = (__u64)dentry;
	key.gen = t->gen;
	if (flags & O_CREAT)
		key.mode = WL_ACC_CREATE;
	else if ((flags & O_ACCMODE) == 1)
		key.mode = WL_ACC_WRITE;
	else if ((flags & O_ACCMODE) == 2)
		key.mode = WL_ACC_READ_WRITE;
	else if (flags & O_DIRECTORY)
		key.mode = WL_ACC_READ_DIR;
	else
		key.mode = WL_ACC_READ;
	if (bpf_map_lookup_elem(&seen, &key))
		return 0;
	bpf_map_update_elem(&seen, &key, &one, BPF_ANY);
	e = reserve(t, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->h, WL_EV_ACCESS, t, task);
	e->nr = nr;
	e->mode = key.mode;
	path_init(&e->path);
	e->path.used = 1;
	e->path.dirfd = (int)fd;
	walk_dir(&e->path, dentry, mnt, task);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(wl_sys_exit, struct pt_regs *regs, long ret)
{
	struct task_struct *task;
	struct tracked *t;
	struct wl_denial *e;
	struct layout l;
	__u32 tgid;
	long nr;

	/* The fast path: a call that did not fail with EACCES/EPERM. */
	if (ret != -EACCES && ret != -EPERM) {
		if (ret < 0 || !accesses_active)
			return 0;
		nr = BPF_CORE_READ(regs, orig_ax);
		if (nr == 2 || nr == 257 || nr == 437 || nr == 85)
			on_open(regs, nr, ret);
		return 0;
	}
	task = bpf_get_current_task_btf();
	tgid = ns_tgid(task);
	if (!tgid)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &tgid);
	if (!t)
		return 0;
	if (start_ticks_of(task) != t->start_ticks) {
		struct session_stats *s = stats_of(t->slot);

		if (s)
			__sync_fetch_and_add(&s->stale, 1);
		return 0;
	}
	if (t->uid != 0 && BPF_CORE_READ(task, cred, euid.val) != t->uid) {
		leave(tgid, t, task, WL_LEFT_CREDENTIALS);
		return 0;
	}
	/* Before anything is read from its memory. A task without an mm has
	 * no user memory: nothing to report. */
	if ((t->flags & WL_FLAG_DUMPABLE) && dumpable_of(task) < 0)
		return 0;
	if (must_leave_non_dumpable(t, task)) {
		leave(tgid, t, task, WL_LEFT_NON_DUMPABLE);
		return 0;
	}
	e = reserve(t, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->h, WL_EV_DENIAL, t, task);
	nr = BPF_CORE_READ(regs, orig_ax);
	e->nr = nr;
	e->ret = ret;
	e->args[0] = BPF_CORE_READ(regs, di);
	e->args[1] = BPF_CORE_READ(regs, si);
	e->args[2] = BPF_CORE_READ(regs, dx);
	e->args[3] = BPF_CORE_READ(regs, r10);
	e->target_pid = 0;
	path_init(&e->paths[0]);
	path_init(&e->paths[1]);
	l = layout_of(nr);
	e->decoded = l.known;
	if (l.name0 >= 0)
		fill_path(&e->paths[0], regs, task, l.dir0, l.name0);
	if (l.name1 >= 0)
		fill_path(&e->paths[1], regs, task, l.dir1, l.name1);
	if (l.fd >= 0)
		fill_path(&e->paths[0], regs, task, l.fd, -1);
	if (l.sock >= 0)
		fill_sockaddr(&e->paths[0], regs, task);
	if (l.pid >= 0)
		e->target_pid = (__s32)arg_of(regs, l.pid);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(wl_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid, ctgid;
	struct tracked *t;
	struct tracked c;
	struct wl_fork *e;
	int claimed;

	/* A new thread: its process is tracked already. */
	if (BPF_CORE_READ(parent, tgid) == BPF_CORE_READ(child, tgid))
		return 0;
	ptgid = ns_tgid(parent);
	if (!ptgid)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &ptgid);
	if (!t || start_ticks_of(parent) != t->start_ticks)
		return 0;
	/* Its children inherit its mm's dumpable bits: none is tracked. */
	if (must_leave_non_dumpable(t, parent)) {
		leave(ptgid, t, parent, WL_LEFT_NON_DUMPABLE);
		return 0;
	}
	/* The child leads its own thread group: its thread_pid is its tgid. */
	ctgid = ns_tid(child);
	if (!ctgid)
		return 0;
	c = *t;
	c.start_ticks = BPF_CORE_READ(child, start_boottime) / NSEC_PER_TICK;
	claimed = share_claim(&c);
	if (claimed <= 0) {
		struct session_stats *s = stats_of(c.slot);

		if (s && claimed == 0)
			__sync_fetch_and_add(&s->untracked_share, 1);
		return 0;
	}
	if (bpf_map_update_elem(&tracked, &ctgid, &c, BPF_ANY)) {
		struct session_stats *s = stats_of(c.slot);

		share_release(&c);
		if (s)
			__sync_fetch_and_add(&s->untracked_full, 1);
		return 0;
	}
	e = reserve(&c, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->h, WL_EV_FORK, &c, parent);
	e->child_tgid = ctgid;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(wl_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = ns_tgid(p);
	struct tracked *t;
	struct wl_exec *e;
	struct file *file;
	const struct cred *cred;

	if (!tgid)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &tgid);
	if (!t || start_ticks_of(p) != t->start_ticks)
		return 0;
	cred = BPF_CORE_READ(p, cred);
	if (BPF_CORE_READ_BITFIELD_PROBED(bprm, secureexec)) {
		leave(tgid, t, p, WL_LEFT_SECURE_EXEC);
		return 0;
	}
	if (t->uid != 0 &&
	    (BPF_CORE_READ(cred, euid.val) != t->uid || BPF_CORE_READ(cred, suid.val) != t->uid ||
	     BPF_CORE_READ(cred, fsuid.val) != t->uid || BPF_CORE_READ(cred, cap_permitted.val) ||
	     BPF_CORE_READ(cred, cap_effective.val))) {
		leave(tgid, t, p, WL_LEFT_CREDENTIALS);
		return 0;
	}
	/* An execute-only (unreadable) program makes the new mm non-dumpable
	 * (would_dump); so may anything else that set it before the exec. */
	if (must_leave_non_dumpable(t, p)) {
		leave(tgid, t, p, WL_LEFT_NON_DUMPABLE);
		return 0;
	}
	e = reserve(t, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->h, WL_EV_EXEC, t, p);
	path_init(&e->exe);
	file = BPF_CORE_READ(bprm, file);
	if (file) {
		e->exe.used = 1;
		walk_dir(&e->exe, BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt),
			 p);
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(wl_exit, struct task_struct *p, bool group_dead)
{
	__u32 tgid;
	struct tracked *t;
	struct tracked copy;
	struct wl_exit *e;

	if (!group_dead)
		return 0;
	tgid = ns_tgid(p);
	if (!tgid)
		return 0;
	t = bpf_map_lookup_elem(&tracked, &tgid);
	if (!t || start_ticks_of(p) != t->start_ticks)
		return 0;
	copy = *t;
	if (!bpf_map_delete_elem(&tracked, &tgid))
		share_release(&copy);
	e = reserve(&copy, sizeof(*e));
	if (!e)
		return 0;
	fill_header(&e->h, WL_EV_EXIT, &copy, p);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
