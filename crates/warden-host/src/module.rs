//! A loaded module: checked, opened by descriptor, called through the C
//! ABI of `warden-module`.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warden_client::{Client, ErrorCode, IncomingCall, Payload, WireError};
use warden_module::ffi;

/// What every module of this host shares: the host's identity (as the
/// modules see it) and the way to publish.
pub struct HostContext {
    client: Arc<Client>,
    handle: tokio::runtime::Handle,
    /// The host info modules read: leaked once per process (modules may
    /// keep the pointer for as long as they are loaded, which is at most
    /// the process lifetime).
    info: &'static warden_module::Static<ffi::warden_host_info>,
    /// Topics the loaded modules declared (a module may publish only on
    /// those).
    topics: std::sync::Mutex<HashSet<String>>,
}

impl HostContext {
    pub fn new(
        name: &str,
        session: Option<&str>,
        client: Arc<Client>,
        handle: tokio::runtime::Handle,
    ) -> Arc<HostContext> {
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let session: &'static str = Box::leak(session.unwrap_or("").to_owned().into_boxed_str());
        let info = Box::leak(Box::new(warden_module::Static(ffi::warden_host_info {
            name: ffi::warden_str {
                ptr: name.as_ptr().cast(),
                len: name.len(),
            },
            uid: nix_uid(),
            pid: std::process::id(),
            session: ffi::warden_str {
                ptr: session.as_ptr().cast(),
                len: session.len(),
            },
        })));
        Arc::new(HostContext {
            client,
            handle,
            info,
            topics: std::sync::Mutex::new(HashSet::new()),
        })
    }
}

impl HostContext {
    /// The topics modules may publish on: exactly those the loaded
    /// `modules` declare (after an unload or reload).
    pub fn set_topics<'a>(&self, modules: impl Iterator<Item = &'a Module>) {
        if let Ok(mut t) = self.topics.lock() {
            *t = modules
                .flat_map(|m| m.topics.iter().map(|(n, _)| n.clone()))
                .collect();
        }
    }
}

fn nix_uid() -> u32 {
    warden_sys::effective_uid()
}

/// A module, loaded and initialised. Dropping it calls the module's
/// `fini` and unloads the library (where the loader can: see
/// docs/modules.md, "Unloading").
pub struct Module {
    /// Its declared name.
    pub name: String,
    /// The path it was loaded from (as configured or as asked).
    pub path: PathBuf,
    /// How the loader's mappings name it in `/proc/self/maps` (the path,
    /// or `/memfd:NAME` for a copy), to tell whether it was unmapped.
    pub mapped_as: String,
    /// Its methods and their descriptions.
    pub methods: Vec<(String, String)>,
    /// Its topics and their descriptions.
    pub topics: Vec<(String, String)>,
    /// It declared `WARDEN_MODULE_QUICK`: its calls run on the I/O thread.
    pub quick: bool,
    desc: ModuleFns,
    state: StatePtr,
    _ctx: Arc<HostContext>,
    // Unloaded after everything that points into it.
    _lib: libloading::Library,
    /// The checked descriptor the library was loaded through, open as long
    /// as the library is loaded: the loader knows libraries by name, and
    /// `/proc/self/fd/N` must not name two of them (a closed descriptor's
    /// number is reused, and a second module loaded by it would be handed
    /// the first).
    _fd: std::os::fd::OwnedFd,
}

/// The module's description, read once at load (as its ABI version lays
/// it out): its function pointers point into the library, which stays
/// loaded as long as the `Module` holding them.
struct ModuleFns(ffi::warden_module_v1);
// SAFETY: function pointers and pointers to immutable static data of the
// library, which stays loaded as long as the `Module`; only read.
unsafe impl Send for ModuleFns {}
// SAFETY: as above.
unsafe impl Sync for ModuleFns {}

/// The module's own state pointer, passed back to it; the ABI says calls
/// may come from several threads at once.
struct StatePtr(*mut c_void);
// SAFETY: the ABI requires modules to accept calls from any thread with
// the state they returned from `init`; the host never dereferences it.
unsafe impl Send for StatePtr {}
// SAFETY: as above.
unsafe impl Sync for StatePtr {}

/// The host API table handed to modules: leaked, one per module, since a
/// module may keep the pointer while loaded.
fn host_api(ctx: &Arc<HostContext>) -> &'static ffi::warden_host_api {
    Box::leak(Box::new(ffi::warden_host_api {
        abi: warden_module::ABI,
        opaque: Arc::as_ptr(ctx).cast_mut().cast(),
        host: &ctx.info.0,
        publish: Some(publish),
    }))
}

fn entries(
    ptr: *const ffi::warden_entry,
    n: usize,
    what: &str,
) -> Result<Vec<(String, String)>, String> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() || n > 4096 {
        return Err(format!("its {what} table is invalid"));
    }
    // SAFETY: the module's description says `n` entries are at `ptr`, in
    // the library's static data (checked non-null, bounded above).
    let table = unsafe { std::slice::from_raw_parts(ptr, n) };
    table
        .iter()
        .map(|e| {
            let text = |p: *const c_char| -> Result<String, String> {
                if p.is_null() {
                    return Err(format!("a {what} entry has no name or description"));
                }
                // SAFETY: NUL-terminated static strings, per the ABI.
                let s = unsafe { CStr::from_ptr(p) };
                s.to_str()
                    .map(str::to_owned)
                    .map_err(|_| format!("a {what} entry is not UTF-8"))
            };
            Ok((text(e.name)?, text(e.description)?))
        })
        .collect()
}

impl Module {
    /// Checks, loads and initialises the module at `path`. With `copy`
    /// (a load or reload at run time), the checked file is copied into a
    /// sealed memfd named `copy` and that is loaded: a new object, even if
    /// the loader still holds one made from the same file.
    pub fn load(path: &Path, ctx: &Arc<HostContext>, copy: Option<&str>) -> Result<Module, String> {
        let checked = warden_sys::open_trusted_file(path).map_err(|e| e.to_string())?;
        let (fd, mapped_as) = match copy {
            None => (checked, path.display().to_string()),
            Some(name) => (
                warden_sys::sealed_copy(&checked, name)
                    .map_err(|e| format!("cannot copy it into memory: {e}"))?,
                format!("/memfd:{name}"),
            ),
        };
        let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // SAFETY: loading a library runs its initialisers: this is the
        // module the configuration names, checked as root's and writable
        // by nobody else, opened by the descriptor just checked.
        let lib = unsafe { libloading::Library::new(&by_fd) }
            .map_err(|e| format!("cannot load it: {e}"))?;
        // SAFETY: the symbol's type is the ABI's entry point type.
        let entry: libloading::Symbol<'_, ffi::EntryFn> = unsafe { lib.get(ffi::ENTRY_SYMBOL) }
            .map_err(|_| {
                "it exports no warden_module_v1: not a Warden module (see docs/modules.md)"
                    .to_string()
            })?;
        // SAFETY: the entry point takes nothing and returns the module's
        // static description.
        let desc = unsafe { entry() };
        if desc.is_null() {
            return Err("warden_module_v1 returned NULL".into());
        }
        // SAFETY: checked non-null; `abi` is the first field of every
        // version of the description, so reading it alone is in bounds.
        let abi = unsafe { std::ptr::addr_of!((*desc).abi).read() };
        if !(warden_module::OLDEST_ABI..=warden_module::ABI).contains(&abi) {
            return Err(format!(
                "it was built for module ABI {abi}, this host speaks {} to {}: rebuild it against this warden-module",
                warden_module::OLDEST_ABI,
                warden_module::ABI
            ));
        }
        // Read the description at the size its version has: an ABI 1
        // module's static ends before `flags`.
        let (d, flags) = if abi == 1 {
            // SAFETY: a version 1 description is a `warden_module_v1`.
            let v1 = unsafe { desc.cast::<ffi::warden_module_v1>().read() };
            (v1, 0)
        } else {
            // SAFETY: a version 2 description is a whole `warden_module`.
            let v2 = unsafe { desc.read() };
            (
                ffi::warden_module_v1 {
                    abi: v2.abi,
                    name: v2.name,
                    methods: v2.methods,
                    n_methods: v2.n_methods,
                    topics: v2.topics,
                    n_topics: v2.n_topics,
                    init: v2.init,
                    call: v2.call,
                    fini: v2.fini,
                },
                v2.flags,
            )
        };
        if d.name.is_null() || d.call.is_none() {
            return Err("its description has no name or no call function".into());
        }
        // SAFETY: NUL-terminated static string, per the ABI.
        let name = unsafe { CStr::from_ptr(d.name) }
            .to_str()
            .map_err(|_| "its name is not UTF-8".to_string())?
            .to_owned();
        let methods = entries(d.methods, d.n_methods, "method")?;
        let topics = entries(d.topics, d.n_topics, "topic")?;
        if let Ok(mut t) = ctx.topics.lock() {
            t.extend(topics.iter().map(|(n, _)| n.clone()));
        }
        let mut state: *mut c_void = std::ptr::null_mut();
        if let Some(init) = d.init {
            let api = host_api(ctx);
            // SAFETY: init takes the host API (leaked, valid forever) and an
            // out-pointer to our local.
            let rc = unsafe { init(api, &mut state) };
            if rc != 0 {
                return Err(format!("its init refused to load (code {rc})"));
            }
        }
        let quick = flags & warden_module::QUICK != 0;
        Ok(Module {
            name,
            quick,
            path: path.to_owned(),
            mapped_as,
            methods,
            topics,
            desc: ModuleFns(d),
            state: StatePtr(state),
            _ctx: Arc::clone(ctx),
            _lib: lib,
            _fd: fd,
        })
    }

    /// Runs one call (blocking: on a blocking thread).
    pub fn call(&self, call: &IncomingCall) -> Result<Payload, WireError> {
        let d = self.desc.0;
        let Some(f) = d.call else {
            return Err(WireError::new(
                ErrorCode::Internal,
                "the module has no call function",
            ));
        };
        let (uid, gid, pid, groups) = match &call.caller {
            Some(c) => (c.uid, c.gid, c.pid, c.groups.as_slice()),
            // The broker always attaches the caller; without one, nobody.
            None => (u32::MAX, u32::MAX, 0, &[][..]),
        };
        let caller = ffi::warden_caller {
            uid,
            gid,
            pid,
            groups: groups.as_ptr(),
            n_groups: groups.len(),
        };
        let method = call.method.as_str();
        let params = call.params.get();
        let mut slot: Option<(bool, String)> = None;
        let sink = ffi::warden_answer {
            opaque: (&mut slot as *mut Option<(bool, String)>).cast(),
            set: Some(set_answer),
        };
        // SAFETY: every pointer passed lives until `f` returns: the method
        // and params strings, the caller (and its groups), the answer sink
        // and the slot it writes to.
        unsafe {
            f(
                self.state.0,
                ffi::warden_str {
                    ptr: method.as_ptr().cast(),
                    len: method.len(),
                },
                ffi::warden_str {
                    ptr: params.as_ptr().cast(),
                    len: params.len(),
                },
                &caller,
                &sink,
            );
        }
        match slot {
            Some((false, json)) => Payload::from_raw_json(&json).map_err(|e| {
                WireError::new(
                    ErrorCode::Internal,
                    format!("the module {} answered with invalid JSON: {e}", self.name),
                )
            }),
            Some((true, json)) => Err(module_error(&self.name, &json)),
            None => Err(WireError::new(
                ErrorCode::Internal,
                format!("the module {} returned without an answer", self.name),
            )),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(fini) = self.desc.0.fini {
            // SAFETY: `fini` points into the library, loaded until `_lib`
            // is dropped after this; it gets the state `init` returned,
            // once, with no call running (every call holds the `Arc` this
            // was the last of).
            unsafe { fini(self.state.0) };
        }
    }
}

/// A module's error object as a wire error; an unknown code becomes
/// `internal` (a module cannot invent codes clients do not know).
fn module_error(module: &str, json: &str) -> WireError {
    #[derive(serde::Deserialize)]
    struct Known {
        code: ErrorCode,
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct Unknown {
        code: String,
        #[serde(default)]
        message: String,
    }
    let Ok(p) = Payload::from_raw_json(json) else {
        return WireError::new(
            ErrorCode::Internal,
            format!("the module {module} answered an error that is not JSON"),
        );
    };
    if let Ok(k) = p.parse::<Known>() {
        return WireError::new(k.code, k.message);
    }
    match p.parse::<Unknown>() {
        Ok(u) => WireError::new(ErrorCode::Internal, format!("{}: {}", u.code, u.message)),
        Err(_) => WireError::new(
            ErrorCode::Internal,
            format!("the module {module} answered an error that is not {{\"code\", \"message\"}}"),
        ),
    }
}

/// The answer sink's `set`: keeps the first answer.
unsafe extern "C" fn set_answer(
    opaque: *mut c_void,
    is_error: c_int,
    json: *const c_char,
    len: usize,
) {
    if opaque.is_null() {
        return;
    }
    let text = if json.is_null() {
        String::new()
    } else {
        // SAFETY: the module passes `len` bytes at `json`, valid for the call.
        let bytes = unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) };
        String::from_utf8_lossy(bytes).into_owned()
    };
    // SAFETY: `opaque` is the slot of the call in progress (see
    // `Module::call`), alive until the module's call returns.
    let slot = unsafe { &mut *opaque.cast::<Option<(bool, String)>>() };
    if slot.is_none() {
        *slot = Some((is_error != 0, text));
    }
}

/// The host API's `publish`.
unsafe extern "C" fn publish(
    opaque: *mut c_void,
    topic: *const c_char,
    json: *const c_char,
    len: usize,
) -> c_int {
    const EINVAL: c_int = 22;
    if opaque.is_null() || topic.is_null() || json.is_null() {
        return EINVAL;
    }
    // SAFETY: `opaque` is the `HostContext` the API table was made for; the
    // modules holding the table keep it alive.
    let ctx = unsafe { &*opaque.cast::<HostContext>() };
    // SAFETY: a NUL-terminated topic, valid for the call.
    let Ok(topic) = unsafe { CStr::from_ptr(topic) }.to_str() else {
        return EINVAL;
    };
    if !ctx
        .topics
        .lock()
        .map(|t| t.contains(topic))
        .unwrap_or(false)
    {
        return EINVAL;
    }
    // SAFETY: `len` bytes at `json`, valid for the call.
    let bytes = unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) };
    let Some(payload) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| Payload::from_raw_json(t).ok())
    else {
        return EINVAL;
    };
    let client = Arc::clone(&ctx.client);
    let topic = topic.to_owned();
    if tokio::runtime::Handle::try_current().is_ok() {
        // On a runtime thread (a module publishing from a call): do not
        // block it; the event leaves in order with the connection's frames.
        ctx.handle.spawn(async move {
            let _ = client.publish(&topic, &payload).await;
        });
        0
    } else {
        match ctx.handle.block_on(client.publish(&topic, &payload)) {
            Ok(_) => 0,
            Err(_) => EINVAL,
        }
    }
}
