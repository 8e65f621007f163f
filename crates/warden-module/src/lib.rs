//! What a Warden module author depends on.
//!
//! A module is a shared library a child host (`warden-host`) loads; it
//! declares methods (and topics), each with a one-line description, and
//! answers calls routed to them with the caller's identity as the broker
//! established it. The ABI is C (`include/warden_module.h`, mirrored in
//! [`ffi`]), versioned by [`ABI`]: the host refuses a module built for
//! another version. A module in C fills in a `warden_module` by hand; in
//! Rust, [`module!`] does it:
//!
//! ```
//! fn echo(call: &warden_module::Call<'_>) -> Result<String, warden_module::Error> {
//!     Ok(format!(r#"{{"you":{},"said":{}}}"#, call.caller.uid, call.params))
//! }
//!
//! warden_module::module! {
//!     name: "hello",
//!     methods: { "hello.echo" => "Answers with the caller's uid and the params" },
//!     topics: {},
//!     call: echo,
//! }
//! ```
//!
//! A handler that panics answers `internal`: the panic stops at the ABI
//! boundary, and the host and its other calls go on.
//!
//! This is an FFI crate: the raw pointers of the ABI are turned into safe
//! types here, once, so a Rust module needs no `unsafe` of its own.
#![expect(
    unsafe_code,
    reason = "the module ABI boundary: raw pointers from the host become safe types here"
)]

use std::ffi::c_void;
use std::sync::OnceLock;

/// The ABI version this crate speaks (`WARDEN_MODULE_ABI` in the header).
/// Version 2 added the host's `session`; a host loads modules built for
/// [`OLDEST_ABI`] up to this.
pub const ABI: u32 = 2;

/// The oldest module ABI a host of this version still loads.
pub const OLDEST_ABI: u32 = 1;

/// `flags` bit (`WARDEN_MODULE_QUICK`): every call returns within
/// microseconds and never blocks, so the host may run it on its I/O
/// thread (no thread handoff). A blocking call then stalls the host's
/// other calls: set it only for calls that compute and return.
pub const QUICK: u32 = 1;

/// The C types of `include/warden_module.h`, field for field.
pub mod ffi {
    #![allow(non_camel_case_types, missing_docs)]
    use std::ffi::{c_char, c_int, c_void};

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_str {
        pub ptr: *const c_char,
        pub len: usize,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_entry {
        pub name: *const c_char,
        pub description: *const c_char,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_caller {
        pub uid: u32,
        pub gid: u32,
        pub pid: u32,
        pub groups: *const u32,
        pub n_groups: usize,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_host_info {
        pub name: warden_str,
        pub uid: u32,
        pub pid: u32,
        /// Since ABI 2.
        pub session: warden_str,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_answer {
        pub opaque: *mut c_void,
        pub set: Option<unsafe extern "C" fn(*mut c_void, c_int, *const c_char, usize)>,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_host_api {
        pub abi: u32,
        pub opaque: *mut c_void,
        pub host: *const warden_host_info,
        pub publish:
            Option<unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char, usize) -> c_int>,
    }

    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_module {
        pub abi: u32,
        pub name: *const c_char,
        pub methods: *const warden_entry,
        pub n_methods: usize,
        pub topics: *const warden_entry,
        pub n_topics: usize,
        pub init: Option<unsafe extern "C" fn(*const warden_host_api, *mut *mut c_void) -> c_int>,
        pub call: Option<
            unsafe extern "C" fn(
                *mut c_void,
                warden_str,
                warden_str,
                *const warden_caller,
                *const warden_answer,
            ),
        >,
        pub fini: Option<unsafe extern "C" fn(*mut c_void)>,
        /// Since ABI 2: [`super::QUICK`] or 0.
        pub flags: u32,
    }

    /// A module description as ABI 1 laid it out (no `flags`): what a
    /// host reads from a module built for ABI 1, whose static is this
    /// size.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct warden_module_v1 {
        pub abi: u32,
        pub name: *const c_char,
        pub methods: *const warden_entry,
        pub n_methods: usize,
        pub topics: *const warden_entry,
        pub n_topics: usize,
        pub init: Option<unsafe extern "C" fn(*const warden_host_api, *mut *mut c_void) -> c_int>,
        pub call: Option<
            unsafe extern "C" fn(
                *mut c_void,
                warden_str,
                warden_str,
                *const warden_caller,
                *const warden_answer,
            ),
        >,
        pub fini: Option<unsafe extern "C" fn(*mut c_void)>,
    }

    /// The name of the one symbol a module exports.
    pub const ENTRY_SYMBOL: &[u8] = b"warden_module_v1\0";

    /// Its type.
    pub type EntryFn = unsafe extern "C" fn() -> *const warden_module;
}

/// Makes a value with raw pointers to static data shareable as a
/// `static` (the module description the host reads).
#[derive(Debug)]
#[repr(transparent)]
pub struct Static<T>(pub T);

// SAFETY: `Static` only wraps the module description, whose pointers all
// point to immutable static data (string literals, other statics); it is
// never written after initialisation, so sharing it between threads is
// sound.
unsafe impl<T> Sync for Static<T> {}

/// Who called, as the broker saw the caller's connection.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Pid (0 if the broker could not see it).
    pub pid: u32,
    /// Supplementary groups.
    pub groups: &'a [u32],
}

/// The host a module runs in.
#[derive(Debug, Clone, Copy)]
pub struct Host<'a> {
    /// The host's configured name.
    pub name: &'a str,
    /// The uid it runs as.
    pub uid: u32,
    /// Its pid.
    pub pid: u32,
    /// The logind session a per-session host serves (`None` for a system
    /// host, or a host older than ABI 2).
    pub session: Option<&'a str>,
}

/// One call to the module.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The method called (one the module declared).
    pub method: &'a str,
    /// The params, as JSON text.
    pub params: &'a str,
    /// Who called.
    pub caller: Caller<'a>,
}

/// An error answer: a code from docs/protocol.md and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// `bad_request`, `internal`, `unavailable`...
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl Error {
    /// An error with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    /// As the JSON object the ABI passes.
    fn to_json(&self) -> String {
        format!(
            r#"{{"code":{},"message":{}}}"#,
            json_string(self.code),
            json_string(&self.message)
        )
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What a [`module!`] handler is.
pub type HandlerFn = fn(&Call<'_>) -> Result<String, Error>;

/// The module's view of its host, set by `init`.
#[derive(Debug, Clone, Copy)]
struct HostApi(ffi::warden_host_api);

// SAFETY: the host API is a table of function pointers and an opaque
// pointer that the host documents as callable from any thread, valid for
// as long as the module is loaded.
unsafe impl Send for HostApi {}
// SAFETY: as above; it is only read after `init` stored it.
unsafe impl Sync for HostApi {}

static HOST_API: OnceLock<HostApi> = OnceLock::new();

/// The host this module runs in (`None` before `init`).
pub fn host() -> Option<Host<'static>> {
    let api = HOST_API.get()?;
    if api.0.host.is_null() {
        return None;
    }
    // SAFETY: the host keeps its info (and the name's bytes) alive and
    // unchanged while the module is loaded; the pointer was checked.
    let info = unsafe { &*api.0.host };
    let session = if api.0.abi >= 2 {
        str_of(info.session).filter(|s| !s.is_empty())
    } else {
        None
    };
    Some(Host {
        name: str_of(info.name)?,
        uid: info.uid,
        pid: info.pid,
        session,
    })
}

/// Publishes `json` on `topic` (one the module declared).
///
/// # Errors
/// The host's errno (`EINVAL`: not JSON, or a topic the module did not
/// declare); `ENOTCONN` before `init`.
pub fn publish(topic: &str, json: &str) -> Result<(), i32> {
    let Some(api) = HOST_API.get() else {
        return Err(107); // ENOTCONN
    };
    let Some(f) = api.0.publish else {
        return Err(95); // EOPNOTSUPP
    };
    let Ok(topic) = std::ffi::CString::new(topic) else {
        return Err(22); // EINVAL
    };
    // SAFETY: the host's publish takes a NUL-terminated topic and a
    // (pointer, length) JSON text, both valid for the call.
    let rc = unsafe {
        f(
            api.0.opaque,
            topic.as_ptr(),
            json.as_ptr().cast(),
            json.len(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(rc)
    }
}

fn str_of<'a>(s: ffi::warden_str) -> Option<&'a str> {
    if s.ptr.is_null() {
        return (s.len == 0).then_some("");
    }
    // SAFETY: the host passes a pointer and length of bytes valid for the
    // call (or, for the host info, while loaded).
    let bytes = unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) };
    std::str::from_utf8(bytes).ok()
}

/// `init` for modules made with [`module!`]: keeps the host API.
///
/// # Safety
/// Called by the host once, with a valid `api`.
pub unsafe extern "C" fn init_trampoline(
    api: *const ffi::warden_host_api,
    state: *mut *mut c_void,
) -> i32 {
    if api.is_null() {
        return 22;
    }
    // SAFETY: the host passes a valid api table (checked non-null).
    let api = unsafe { *api };
    // Every host this crate knows of lays the API out the same way; what
    // a later ABI added is read only when `api.abi` says it is there.
    if api.abi < OLDEST_ABI {
        return 22;
    }
    let _ = HOST_API.set(HostApi(api));
    if !state.is_null() {
        // SAFETY: `state` is the host's out-pointer, valid for the call.
        unsafe { *state = std::ptr::null_mut() };
    }
    0
}

/// `call` for modules made with [`module!`]: safe types in, the
/// handler's answer (or `internal` if it panicked) out.
///
/// # Safety
/// Called by the host with pointers valid for the call.
pub unsafe fn call_trampoline(
    handler: HandlerFn,
    method: ffi::warden_str,
    params: ffi::warden_str,
    caller: *const ffi::warden_caller,
    answer: *const ffi::warden_answer,
) {
    if answer.is_null() {
        return;
    }
    // SAFETY: the host passes a valid answer sink for the call.
    let answer = unsafe { *answer };
    let Some(set) = answer.set else {
        return;
    };
    let reply = |r: Result<String, Error>| {
        let (is_error, text) = match r {
            Ok(json) => (0, json),
            Err(e) => (1, e.to_json()),
        };
        // SAFETY: `set` is the host's sink; the text is valid for the call.
        unsafe { set(answer.opaque, is_error, text.as_ptr().cast(), text.len()) };
    };
    let (Some(method), Some(params)) = (str_of(method), str_of(params)) else {
        reply(Err(Error::new(
            "bad_request",
            "the method or params are not UTF-8",
        )));
        return;
    };
    let caller = if caller.is_null() {
        Caller {
            uid: u32::MAX,
            gid: u32::MAX,
            pid: 0,
            groups: &[],
        }
    } else {
        // SAFETY: the host passes a valid caller for the call.
        let c = unsafe { *caller };
        let groups = if c.groups.is_null() || c.n_groups == 0 {
            &[][..]
        } else {
            // SAFETY: `n_groups` gids at `groups`, valid for the call.
            unsafe { std::slice::from_raw_parts(c.groups, c.n_groups) }
        };
        Caller {
            uid: c.uid,
            gid: c.gid,
            pid: c.pid,
            groups,
        }
    };
    let call = Call {
        method,
        params,
        caller,
    };
    let r = std::panic::catch_unwind(|| handler(&call))
        .unwrap_or_else(|_| Err(Error::new("internal", "the module's handler panicked")));
    reply(r);
}

/// Declares a module: its name, methods and topics (each with a one-line
/// description) and the function that answers its calls; `quick: true`
/// after `call` sets [`QUICK`] (calls that never block run on the host's
/// I/O thread). See the crate docs for an example.
#[macro_export]
macro_rules! module {
    (
        name: $name:literal,
        methods: { $($m:literal => $md:literal),* $(,)? },
        topics: { $($t:literal => $td:literal),* $(,)? },
        call: $handler:path
        $(, quick: $quick:literal)? $(,)?
    ) => {
        const _: () = {
            static METHODS: $crate::Static<&[$crate::ffi::warden_entry]> = $crate::Static(&[
                $($crate::ffi::warden_entry {
                    name: concat!($m, "\0").as_ptr().cast(),
                    description: concat!($md, "\0").as_ptr().cast(),
                }),*
            ]);
            static TOPICS: $crate::Static<&[$crate::ffi::warden_entry]> = $crate::Static(&[
                $($crate::ffi::warden_entry {
                    name: concat!($t, "\0").as_ptr().cast(),
                    description: concat!($td, "\0").as_ptr().cast(),
                }),*
            ]);
            #[allow(unsafe_code)]
            unsafe extern "C" fn call(
                _state: *mut ::std::ffi::c_void,
                method: $crate::ffi::warden_str,
                params: $crate::ffi::warden_str,
                caller: *const $crate::ffi::warden_caller,
                answer: *const $crate::ffi::warden_answer,
            ) {
                // SAFETY: the host calls with pointers valid for the call,
                // as the ABI requires; the trampoline checks them.
                unsafe { $crate::call_trampoline($handler, method, params, caller, answer) }
            }
            static MODULE: $crate::Static<$crate::ffi::warden_module> =
                $crate::Static($crate::ffi::warden_module {
                    abi: $crate::ABI,
                    name: concat!($name, "\0").as_ptr().cast(),
                    methods: METHODS.0.as_ptr(),
                    n_methods: METHODS.0.len(),
                    topics: TOPICS.0.as_ptr(),
                    n_topics: TOPICS.0.len(),
                    init: Some($crate::init_trampoline),
                    call: Some(call),
                    fini: None,
                    flags: if false $(|| $quick)? { $crate::QUICK } else { 0 },
                });
            #[allow(unsafe_code)]
            #[no_mangle]
            extern "C" fn warden_module_v1() -> *const $crate::ffi::warden_module {
                &MODULE.0
            }
        };
    };
}
