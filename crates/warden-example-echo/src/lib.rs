//! The example module (`libwarden_example_echo.so`): `example.echo`
//! answers `{"params": <params>, "caller": {"uid", "gid", "groups",
//! "pid"}, "host": {"name", "uid", "pid", "session"}}` (`session` for a
//! per-session host's instance only), so a test (or a curious operator)
//! sees exactly which identity a call reached a module with.

use warden_module::{json_string, Call, Error};

fn echo(call: &Call<'_>) -> Result<String, Error> {
    let c = call.caller;
    let groups: Vec<String> = c.groups.iter().map(u32::to_string).collect();
    let host = warden_module::host()
        .map(|h| {
            let session = h
                .session
                .map(|s| format!(r#","session":{}"#, json_string(s)))
                .unwrap_or_default();
            format!(
                r#"{{"name":{},"uid":{},"pid":{}{session}}}"#,
                json_string(h.name),
                h.uid,
                h.pid
            )
        })
        .unwrap_or_else(|| "null".into());
    Ok(format!(
        r#"{{"params":{},"caller":{{"uid":{},"gid":{},"groups":[{}],"pid":{}}},"host":{host}}}"#,
        call.params,
        c.uid,
        c.gid,
        groups.join(","),
        c.pid
    ))
}

warden_module::module! {
    name: "example-echo",
    methods: { "example.echo" => "Answers with its params, the caller's identity and the host" },
    topics: {},
    call: echo,
    // It formats a string and returns: no thread handoff needed.
    quick: true,
}
