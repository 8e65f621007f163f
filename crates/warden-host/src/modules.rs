//! The host's loaded modules, and loading, unloading and reloading them
//! while the host serves.
//!
//! The broker commands a host with calls to [`CONTROL_METHOD`], a name in
//! the reserved `warden.*` namespace: no connection can provide such a
//! name, so no routed call carries one, and the only sender is the broker
//! itself (`BrokerHandle::call_host`), after it checked the operator's
//! `module` permission and audited the request. The paths it sends are
//! checked again here, by [`warden_sys::open_trusted_file`].
//!
//! Each call holds an `Arc` of the module serving it. Unloading withdraws
//! the module's methods from the broker first (no new call arrives), then
//! waits until no call holds the module, then drops it (`fini`, then
//! `dlclose`). Reloading loads the file again as a new object (a sealed
//! memfd copy), moves the methods to it in one step, so callers never see
//! a gap, and retires the old object the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::json;
use warden_client::{Client, ErrorCode, Payload, WireError};

use crate::module::{HostContext, Module};

/// The method the broker calls to load, unload or reload a module here.
pub const CONTROL_METHOD: &str = warden_proto::HOST_MODULE_METHOD;

#[derive(Default)]
struct Maps {
    /// Loaded modules, in load order.
    modules: Vec<Arc<Module>>,
    by_method: HashMap<String, Arc<Module>>,
}

/// The modules a host has loaded.
pub struct ModuleSet {
    maps: RwLock<Maps>,
    ctx: Arc<HostContext>,
    client: Arc<Client>,
    /// One load/unload/reload at a time.
    ops: tokio::sync::Mutex<()>,
    /// Names the memfd copies apart in /proc/self/maps.
    copies: AtomicU64,
}

/// What the broker asks ([`CONTROL_METHOD`]'s params).
#[derive(serde::Deserialize)]
struct Request {
    op: Op,
    /// The module file (load: a path; unload, reload: its path or the
    /// module's declared name).
    module: String,
}

#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Op {
    Load,
    Unload,
    Reload,
}

fn bad(text: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, text)
}

fn internal(text: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Internal, text)
}

impl ModuleSet {
    pub fn new(ctx: Arc<HostContext>, client: Arc<Client>) -> Arc<ModuleSet> {
        Arc::new(ModuleSet {
            maps: RwLock::new(Maps::default()),
            ctx,
            client,
            ops: tokio::sync::Mutex::new(()),
            copies: AtomicU64::new(0),
        })
    }

    /// The module serving `method`, if one does.
    pub fn serving(&self, method: &str) -> Option<Arc<Module>> {
        self.maps.read().ok()?.by_method.get(method).cloned()
    }

    /// Loads the modules the host was started with (from their files, not
    /// copies) and provides their methods; any failure stops the host.
    pub async fn load_initial(&self, paths: &[PathBuf]) -> Result<(), String> {
        for path in paths {
            let m = self
                .load_blocking(path, None)
                .await
                .map_err(|e| e.message)?;
            self.add(m).await.map_err(|e| e.message)?;
        }
        Ok(())
    }

    /// Answers one [`CONTROL_METHOD`] call.
    pub async fn control(&self, params: &Payload) -> Result<Payload, WireError> {
        let r: Request = params.parse().map_err(|e| {
            bad(format!(
                "params must be {{\"op\": \"load\"|\"unload\"|\"reload\", \"module\": PATH}}: {e}"
            ))
        })?;
        let _one_at_a_time = self.ops.lock().await;
        match r.op {
            Op::Load => {
                let path = Path::new(&r.module);
                if self.find(&r.module).is_some() {
                    return Err(bad(format!(
                        "{} is already loaded; reload it to pick up a new build",
                        r.module
                    )));
                }
                let m = self.load_blocking(path, Some(self.copy_name(path))).await?;
                let answer = json!({
                    "op": "load",
                    "module": m.name,
                    "path": m.path,
                    "methods": m.methods.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                });
                self.add(m).await?;
                to_payload(&answer)
            }
            Op::Unload => {
                let old = self
                    .find(&r.module)
                    .ok_or_else(|| self.not_loaded(&r.module))?;
                let methods: Vec<String> = old.methods.iter().map(|(n, _)| n.clone()).collect();
                {
                    let mut maps = self
                        .maps
                        .write()
                        .map_err(|_| internal("module map poisoned"))?;
                    maps.modules.retain(|m| !Arc::ptr_eq(m, &old));
                    for n in &methods {
                        maps.by_method.remove(n);
                    }
                    self.ctx.set_topics(maps.modules.iter().map(|m| &**m));
                }
                for n in &methods {
                    if let Err(e) = self.client.unprovide(n).await {
                        tracing::warn!(method = %n, "withdrawing the method: {e}");
                    }
                }
                let (name, path) = (old.name.clone(), old.path.clone());
                let retired = self.retire(old).await;
                tracing::info!(module = %name, "unloaded {}", path.display());
                to_payload(&json!({
                    "op": "unload",
                    "module": name,
                    "path": path,
                    "methods": methods,
                    "unmapped": retired,
                }))
            }
            Op::Reload => {
                let old = self
                    .find(&r.module)
                    .ok_or_else(|| self.not_loaded(&r.module))?;
                let new = self
                    .load_blocking(&old.path, Some(self.copy_name(&old.path)))
                    .await?;
                let new = Arc::new(new);
                let old_methods: Vec<String> = old.methods.iter().map(|(n, _)| n.clone()).collect();
                let added: Vec<(String, String)> = new
                    .methods
                    .iter()
                    .filter(|(n, _)| !old_methods.contains(n))
                    .cloned()
                    .collect();
                let dropped: Vec<String> = old_methods
                    .iter()
                    .filter(|n| !new.methods.iter().any(|(m, _)| m == *n))
                    .cloned()
                    .collect();
                {
                    let mut maps = self
                        .maps
                        .write()
                        .map_err(|_| internal("module map poisoned"))?;
                    if let Some((n, _)) = added.iter().find(|(n, _)| maps.by_method.contains_key(n))
                    {
                        return Err(bad(format!(
                            "the new build declares {n}, which another module of this host serves"
                        )));
                    }
                    for slot in maps.modules.iter_mut() {
                        if Arc::ptr_eq(slot, &old) {
                            *slot = Arc::clone(&new);
                        }
                    }
                    for n in &dropped {
                        maps.by_method.remove(n);
                    }
                    for (n, _) in &new.methods {
                        maps.by_method.insert(n.clone(), Arc::clone(&new));
                    }
                    self.ctx.set_topics(maps.modules.iter().map(|m| &**m));
                }
                for n in &dropped {
                    if let Err(e) = self.client.unprovide(n).await {
                        tracing::warn!(method = %n, "withdrawing the method: {e}");
                    }
                }
                for (n, d) in &added {
                    if let Err(e) = self.client.provide_described(n, Some(d)).await {
                        tracing::warn!(method = %n, "providing the new method: {e}");
                    }
                }
                let retired = self.retire(old).await;
                tracing::info!(module = %new.name, "reloaded {}", new.path.display());
                to_payload(&json!({
                    "op": "reload",
                    "module": new.name,
                    "path": new.path,
                    "methods": new.methods.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "added": added.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "removed": dropped,
                    "old_unmapped": retired,
                }))
            }
        }
    }

    fn copy_name(&self, path: &Path) -> String {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().chars().take(128).collect::<String>())
            .unwrap_or_default();
        let n = self.copies.fetch_add(1, Ordering::Relaxed);
        format!("warden-module:{stem}:{n}")
    }

    fn find(&self, which: &str) -> Option<Arc<Module>> {
        let maps = self.maps.read().ok()?;
        maps.modules
            .iter()
            .find(|m| m.name == which || m.path.as_os_str() == which)
            .cloned()
    }

    fn not_loaded(&self, which: &str) -> WireError {
        let loaded: Vec<String> = self
            .maps
            .read()
            .map(|m| {
                m.modules
                    .iter()
                    .map(|m| format!("{} ({})", m.name, m.path.display()))
                    .collect()
            })
            .unwrap_or_default();
        bad(format!(
            "no module {which:?} is loaded in this host; loaded: {loaded:?}"
        ))
    }

    async fn load_blocking(&self, path: &Path, copy: Option<String>) -> Result<Module, WireError> {
        let (ctx, p) = (Arc::clone(&self.ctx), path.to_owned());
        tokio::task::spawn_blocking(move || Module::load(&p, &ctx, copy.as_deref()))
            .await
            .map_err(|_| internal(format!("loading {} failed", path.display())))?
            .map_err(|e| bad(format!("{}: {e}", path.display())))
    }

    /// Adds a loaded module: its methods must be new to this host; each is
    /// provided (with its description) before any call can reach it.
    async fn add(&self, m: Module) -> Result<(), WireError> {
        let m = Arc::new(m);
        {
            let maps = self
                .maps
                .read()
                .map_err(|_| internal("module map poisoned"))?;
            if let Some((n, _)) = m
                .methods
                .iter()
                .find(|(n, _)| maps.by_method.contains_key(n))
            {
                return Err(bad(format!(
                    "{} declares {n}, which another module of this host serves",
                    m.path.display()
                )));
            }
        }
        {
            let mut maps = self
                .maps
                .write()
                .map_err(|_| internal("module map poisoned"))?;
            for (n, _) in &m.methods {
                maps.by_method.insert(n.clone(), Arc::clone(&m));
            }
            maps.modules.push(Arc::clone(&m));
            self.ctx.set_topics(maps.modules.iter().map(|m| &**m));
        }
        let mut provided: Vec<String> = Vec::new();
        let methods = m.methods.clone();
        for (n, d) in &methods {
            if let Err(e) = self.client.provide_described(n, Some(d)).await {
                // Undo: the module stays out rather than half in.
                for p in &provided {
                    let _ = self.client.unprovide(p).await;
                }
                if let Ok(mut maps) = self.maps.write() {
                    maps.modules.retain(|x| !Arc::ptr_eq(x, &m));
                    for (n, _) in &m.methods {
                        maps.by_method.remove(n);
                    }
                    self.ctx.set_topics(maps.modules.iter().map(|m| &**m));
                }
                self.retire(m).await;
                return Err(WireError::new(
                    e.code().unwrap_or(ErrorCode::Internal),
                    format!("providing {n}: {e}"),
                ));
            }
            provided.push(n.clone());
        }
        tracing::info!(
            module = %m.name,
            methods = m.methods.len(),
            topics = m.topics.len(),
            "loaded {}",
            m.path.display()
        );
        Ok(())
    }

    /// Waits until no call holds `m`, then drops it (`fini`, `dlclose`);
    /// true if the loader then unmapped it.
    async fn retire(&self, m: Arc<Module>) -> bool {
        let mut m = m;
        loop {
            match Arc::try_unwrap(m) {
                Ok(module) => {
                    let mapped_as = module.mapped_as.clone();
                    let dropped = tokio::task::spawn_blocking(move || {
                        drop(module);
                        !still_mapped(&mapped_as)
                    })
                    .await;
                    return dropped.unwrap_or(false);
                }
                Err(shared) => {
                    m = shared;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
}

/// True if `/proc/self/maps` still maps a file named `name` (what the
/// loader keeps of a library it could not unload).
fn still_mapped(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|maps| {
        maps.lines()
            .any(|l| l.split_whitespace().nth(5).is_some_and(|f| f == name))
    })
}

fn to_payload(v: &serde_json::Value) -> Result<Payload, WireError> {
    Payload::from_value(v).map_err(|e| internal(e.to_string()))
}
