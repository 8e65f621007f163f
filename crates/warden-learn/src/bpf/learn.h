/* SPDX-License-Identifier: (MIT OR GPL-2.0) */
/*
 * Records the kernel half of learning mode writes to a session's ring
 * buffer. The Rust half (src/event.rs) reads them at the offsets the
 * static asserts below pin; change both together.
 */
#ifndef WARDEN_LEARN_H
#define WARDEN_LEARN_H

#define WL_MAX_SESSIONS 64
#define WL_MAX_TRACKED 16384
#define WL_RINGBUF_BYTES (1024 * 1024)
#define WL_NAME_BYTES 512  /* the path string a syscall was given */
#define WL_NAME_MAX 256    /* one directory entry name, with its NUL */
#define WL_DIR_BYTES 2048  /* resolved directory names; a power of two */
#define WL_MAX_DEPTH 40    /* directory levels walked */

enum wl_kind {
	WL_EV_DENIAL = 1,
	WL_EV_FORK = 2,
	WL_EV_EXEC = 3,
	WL_EV_EXIT = 4,
	WL_EV_LEFT = 5,
	WL_EV_ACCESS = 6,
};

enum wl_access_mode {
	WL_ACC_READ = 1,
	WL_ACC_WRITE = 2,
	WL_ACC_READ_WRITE = 3,
	WL_ACC_EXECUTE = 4,
	WL_ACC_READ_DIR = 5,
	WL_ACC_CREATE = 6,
};

/* tracked.flags */
#define WL_FLAG_ACCESSES 1 /* also report the first successful open of each file */
#define WL_FLAG_DUMPABLE 2 /* leave when the process is not dumpable (non-root callers) */

enum wl_left_reason {
	WL_LEFT_SECURE_EXEC = 1, /* setuid/setgid/file-capability exec */
	WL_LEFT_CREDENTIALS = 2, /* its credentials no longer match the session's */
	WL_LEFT_NON_DUMPABLE = 3, /* not SUID_DUMP_USER: a debugger could not read it */
};

enum wl_dir_state {
	WL_DIR_NONE = 0,      /* absolute name: no directory needed */
	WL_DIR_COMPLETE = 1,  /* walked up to the root */
	WL_DIR_TRUNCATED = 2, /* deeper than we walk, or names too long */
	WL_DIR_DETACHED = 3,  /* the directory is not reachable from the root */
	WL_DIR_BAD_FD = 4,    /* the dirfd was not an open file */
};

enum wl_name_state {
	WL_NAME_NONE = 0,
	WL_NAME_OK = 1,
	WL_NAME_TRUNCATED = 2,
	WL_NAME_UNREADABLE = 3,
	WL_NAME_ABSTRACT = 4, /* an abstract Unix socket name */
};

/* The capture's view of pids: the broker's pid namespace (config map). */
struct wl_config {
	__u32 pidns_ino; /* inode of the broker's /proc/self/ns/pid */
	__u32 pad;
};

#define WL_MAX_PID_LEVEL 32 /* MAX_PID_NS_LEVEL: nesting depth of pid namespaces */

struct wl_header {
	__u32 kind;
	__u32 gen;
	__u32 tgid;
	__u32 tid;
	__u64 ktime_ns;
	__u32 uid;
	__u32 euid;
	char comm[16];
};

struct wl_path {
	__s32 dirfd;
	__u32 name_len;
	__u32 dir_len;
	__u8 used;
	__u8 name_state;
	__u8 dir_state;
	__u8 pad;
	char name[WL_NAME_BYTES];
	char dir[WL_DIR_BYTES + WL_NAME_MAX];
};

struct wl_denial {
	struct wl_header h;
	__s64 nr;
	__s64 ret;
	__u64 args[4];
	__s32 target_pid;
	__u32 decoded;
	struct wl_path paths[2];
};

struct wl_fork {
	struct wl_header h;
	__u32 child_tgid;
	__u32 pad;
};

struct wl_exec {
	struct wl_header h;
	struct wl_path exe;
};

struct wl_exit {
	struct wl_header h;
	__s32 exit_code;
	__u32 pad;
};

struct wl_left {
	struct wl_header h;
	__u32 reason;
	__u32 pad;
};

struct wl_access {
	struct wl_header h;
	__s64 nr;
	__u32 mode;
	__u32 pad;
	struct wl_path path;
};

_Static_assert(sizeof(struct wl_access) == 2896, "wl_access layout");
_Static_assert(__builtin_offsetof(struct wl_access, path) == 64, "wl_access.path");
_Static_assert(sizeof(struct wl_header) == 48, "wl_header layout");
_Static_assert(sizeof(struct wl_path) == 2832, "wl_path layout");
_Static_assert(__builtin_offsetof(struct wl_path, name) == 16, "wl_path.name");
_Static_assert(__builtin_offsetof(struct wl_path, dir) == 528, "wl_path.dir");
_Static_assert(__builtin_offsetof(struct wl_denial, nr) == 48, "wl_denial.nr");
_Static_assert(__builtin_offsetof(struct wl_denial, target_pid) == 96, "wl_denial.target_pid");
_Static_assert(__builtin_offsetof(struct wl_denial, paths) == 104, "wl_denial.paths");
_Static_assert(sizeof(struct wl_denial) == 5768, "wl_denial layout");
_Static_assert(sizeof(struct wl_fork) == 56, "wl_fork layout");
_Static_assert(sizeof(struct wl_exec) == 2880, "wl_exec layout");
_Static_assert(sizeof(struct wl_exit) == 56, "wl_exit layout");
_Static_assert(sizeof(struct wl_left) == 56, "wl_left layout");
_Static_assert(sizeof(struct wl_config) == 8, "wl_config layout");

#endif
