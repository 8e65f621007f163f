/*
 * warden_module.h: the module ABI of Warden child hosts, version 2.
 *
 * A module is a shared library that exports one function,
 * warden_module_v1(), returning a pointer to a static warden_module.
 * The host (warden-host) loads it, checks `abi`, calls init() once,
 * registers the module's methods with the broker, and calls call() for
 * each call routed to one of them, with the caller's identity as the
 * broker established it. Calls may arrive on several threads at once.
 *
 * Strings in warden_entry and `name` are NUL-terminated UTF-8 and live
 * as long as the module is loaded. warden_str is UTF-8 with a length and
 * no terminator, valid only during the call it is passed to. JSON is
 * UTF-8 text.
 */
#ifndef WARDEN_MODULE_H
#define WARDEN_MODULE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Version 2 added `session` to warden_host_info. A host loads modules
 * built for version 1 or 2; a module reads `session` only when the host's
 * api->abi is 2 or more.
 */
#define WARDEN_MODULE_ABI 2u

typedef struct warden_str {
    const char *ptr;
    size_t len;
} warden_str;

/* A method or topic the module declares, with a one-line description. */
typedef struct warden_entry {
    const char *name;
    const char *description;
} warden_entry;

/* Who called: as the broker saw the caller's connection. */
typedef struct warden_caller {
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    const uint32_t *groups;
    size_t n_groups;
} warden_caller;

/* The host the module runs in. */
typedef struct warden_host_info {
    warden_str name;
    uint32_t uid;
    uint32_t pid;
    /* Since ABI 2: the logind session a per-session host serves; empty
       (len 0) for a system host. */
    warden_str session;
} warden_host_info;

/*
 * Where a call's answer goes. call() must call set() exactly once before
 * it returns: is_error = 0 with the result (any JSON value), or
 * is_error = 1 with {"code": "...", "message": "..."} (codes as in
 * docs/protocol.md; "internal" if in doubt). A call() that returns
 * without an answer answers "internal".
 */
typedef struct warden_answer {
    void *opaque;
    void (*set)(void *opaque, int is_error, const char *json, size_t len);
} warden_answer;

/* What the host offers the module. */
typedef struct warden_host_api {
    uint32_t abi;
    void *opaque;
    const warden_host_info *host;
    /* Publishes `json` on `topic` (one of the module's topics). Returns 0,
       or an errno value (EINVAL: not JSON or not a declared topic). */
    int (*publish)(void *opaque, const char *topic, const char *json, size_t len);
} warden_host_api;

typedef struct warden_module {
    uint32_t abi; /* WARDEN_MODULE_ABI */
    const char *name;
    const warden_entry *methods;
    size_t n_methods;
    const warden_entry *topics;
    size_t n_topics;
    /* Once after loading, before any call. *state goes to call() and
       fini(). Nonzero: the module refuses to load. May be NULL. */
    int (*init)(const warden_host_api *api, void **state);
    void (*call)(void *state, warden_str method, warden_str params,
                 const warden_caller *caller, const warden_answer *answer);
    /* Before unloading, once no call is running. May be NULL. */
    void (*fini)(void *state);
    /* Since ABI 2 (a host reads it only from modules built for 2 or
       more): WARDEN_MODULE_QUICK, or 0. */
    uint32_t flags;
} warden_module;

/*
 * Every call of this module returns within microseconds and never blocks
 * (no I/O, no locks held by others, no sleeping): the host may run it on
 * its I/O thread instead of handing it to a worker thread, which saves a
 * thread handoff per call. A call that does block stalls every other call
 * of the host while it runs; without the flag, calls run on worker
 * threads, up to 64 at once.
 */
#define WARDEN_MODULE_QUICK 1u

/* The one symbol a module exports. */
const warden_module *warden_module_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* WARDEN_MODULE_H */
