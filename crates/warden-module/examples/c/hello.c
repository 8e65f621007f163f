/*
 * The example C module: example.hello_c greets the caller by uid.
 * Build: cc -shared -fPIC -I crates/warden-module/include -o libwarden_example_hello_c.so hello.c
 */
#include <stdio.h>
#include <stddef.h>

#include "warden_module.h"

static const warden_entry methods[] = {
    {"example.hello_c", "Greets the caller by uid, from C"},
};

static void call(void *state, warden_str method, warden_str params,
                 const warden_caller *caller, const warden_answer *answer)
{
    char buf[96];
    int n;

    (void)state;
    (void)method;
    (void)params;
    n = snprintf(buf, sizeof buf, "{\"hello\":%u,\"from\":\"c\"}", caller->uid);
    if (n < 0 || (size_t)n >= sizeof buf) {
        static const char err[] = "{\"code\":\"internal\",\"message\":\"the answer did not fit\"}";
        answer->set(answer->opaque, 1, err, sizeof err - 1);
        return;
    }
    answer->set(answer->opaque, 0, buf, (size_t)n);
}

static const warden_module module = {
    .abi = WARDEN_MODULE_ABI,
    .name = "hello-c",
    .methods = methods,
    .n_methods = sizeof methods / sizeof methods[0],
    .topics = NULL,
    .n_topics = 0,
    .init = NULL,
    .call = call,
    .fini = NULL,
};

const warden_module *warden_module_v1(void)
{
    return &module;
}
