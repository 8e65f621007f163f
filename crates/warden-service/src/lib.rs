//! Warden as a system service.
//!
//! Everything here is a pure function of the configuration plus plain file
//! operations under an install root (`/` or an offline image, like
//! `systemctl --root`): the unit files, the sysusers.d and tmpfiles.d
//! entries, the privileges the broker needs (computed from the enabled
//! features, each with its reason), a manifest of exactly what install
//! created so uninstall removes exactly that, and a report of the installed
//! state for `wardenctl dump`.
//!
//! # Attacker model
//! Install runs as root. It writes only below the root it is given, never
//! follows a path it did not create into somebody else's file (it refuses
//! to overwrite anything it did not create, except its own unit files),
//! and never overwrites an existing configuration file.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_policy::{Config, DEFAULT_CONFIG};

/// The service and socket unit names.
pub const SERVICE_UNIT: &str = "warden.service";
/// The socket unit.
pub const SOCKET_UNIT: &str = "warden.socket";
/// The service account.
pub const SERVICE_USER: &str = "warden";
/// The system socket path written into an installed configuration.
pub const SYSTEM_SOCKET: &str = "/run/warden/warden.sock";
/// Where the configuration lives, relative to the root.
pub const CONFIG_PATH: &str = "etc/warden/warden.toml";
/// The install manifest, relative to the root.
pub const MANIFEST_PATH: &str = "var/lib/warden/install-manifest.json";

const UNIT_DIR: &str = "etc/systemd/system";
const SYSUSERS_PATH: &str = "etc/sysusers.d/warden.conf";
const TMPFILES_PATH: &str = "etc/tmpfiles.d/warden.conf";

/// A privilege the broker's unit grants, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capability {
    /// `CAP_...`.
    pub name: &'static str,
    /// The feature that needs it.
    pub reason: &'static str,
}

/// The capabilities the enabled features need. The core (endpoint, policy,
/// routing, pub/sub) needs none: the broker runs as the `warden` user with
/// an empty capability set; the socket is created by the socket unit.
/// Features that need privileges (learning mode: `CAP_BPF`,
/// `CAP_PERFMON`; per-user child hosts: `CAP_SETUID`, `CAP_SETGID`,
/// `CAP_KILL`) add theirs here when they land.
pub fn capabilities(config: &Config) -> Vec<Capability> {
    let mut caps = Vec::new();
    if config.learn.enabled {
        caps.push(Capability {
            name: "CAP_BPF",
            reason: "learning mode: load the eBPF programs that capture a traced process's denials",
        });
        caps.push(Capability {
            name: "CAP_PERFMON",
            reason: "learning mode: attach them to syscall tracepoints and read their ring buffer",
        });
        caps.push(Capability {
            name: "CAP_SYS_PTRACE",
            reason: "learning mode: read the traced process's executable and start time from /proc (processes of other uids)",
        });
    }
    caps
}

/// What install does.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Install root (`/` for the running system).
    pub root: PathBuf,
    /// The `wardend` binary, as the unit names it (a path inside `root`).
    pub wardend: PathBuf,
    /// A configuration file to install instead of the embedded default
    /// (only if none exists yet).
    pub config: Option<PathBuf>,
}

/// Why install or uninstall failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The configuration to install is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] warden_policy::ConfigError),
    /// Something not created by Warden is where install would write.
    #[error("refusing to overwrite {path}: it exists and was not created by wardenctl install (owner uid {owner}); move it away first")]
    Occupied {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// The manifest cannot be read.
    #[error("the install manifest {path} is unreadable: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServiceError + 'a {
    move |source| ServiceError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What install created, so uninstall removes exactly that.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Files created (root-relative).
    pub files: Vec<String>,
    /// Directories created (root-relative), parents first.
    pub dirs: Vec<String>,
    /// True if install wrote the configuration file.
    pub config_created: bool,
}

/// The configuration text install writes when none exists: the embedded
/// default with the system socket path written out.
pub fn default_installed_config() -> String {
    DEFAULT_CONFIG.replacen(
        "[broker]\n",
        &format!("[broker]\nsocket = \"{SYSTEM_SOCKET}\"\n"),
        1,
    )
}

/// The service unit for `config`.
pub fn service_unit(config: &Config, wardend: &Path) -> String {
    let caps = capabilities(config);
    let mut cap_lines = String::new();
    if caps.is_empty() {
        cap_lines.push_str(
            "# No capabilities: the core broker (endpoint, policy, routing, pub/sub)\n\
             # needs none, and the socket is created by warden.socket.\n\
             CapabilityBoundingSet=\nAmbientCapabilities=\n",
        );
    } else {
        for c in &caps {
            cap_lines.push_str(&format!("# {}: {}\n", c.name, c.reason));
        }
        let names: Vec<&str> = caps.iter().map(|c| c.name).collect();
        cap_lines.push_str(&format!(
            "CapabilityBoundingSet={0}\nAmbientCapabilities={0}\n",
            names.join(" ")
        ));
    }
    format!(
        "# Generated by wardenctl install from {source}; edit the configuration\n\
         # and run wardenctl install again rather than editing this file.\n\
         [Unit]\n\
         Description=Warden local IPC broker\n\
         Requires={SOCKET_UNIT}\n\
         After={SOCKET_UNIT}\n\
         # Crash recovery: restart after 5 s, at most 3 times a day.\n\
         StartLimitIntervalSec=1d\n\
         StartLimitBurst=3\n\
         \n\
         [Service]\n\
         Type=notify\n\
         NotifyAccess=main\n\
         ExecStart={wardend} --config /{CONFIG_PATH}\n\
         ExecReload=/usr/bin/kill -HUP $MAINPID\n\
         User={SERVICE_USER}\n\
         Group={SERVICE_USER}\n\
         StateDirectory=warden\n\
         StateDirectoryMode=0750\n\
         WatchdogSec=30s\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         TimeoutStopSec=30s\n\
         {cap_lines}\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         # AF_UNIX only: the broker opens no network socket.\n\
         PrivateNetwork=yes\n\
         RestrictAddressFamilies=AF_UNIX\n\
         IPAddressDeny=any\n\
         # No PrivateUsers=: a user namespace would hide callers' real uids.\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RemoveIPC=yes\n\
         UMask=0077\n\
         DevicePolicy=closed\n\
         KeyringMode=private\n\
         SystemCallArchitectures=native\n\
         {syscalls}\
         SystemCallErrorNumber=EPERM\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        source = config.source,
        wardend = wardend.display(),
        syscalls = if config.learn.enabled {
            "# Learning mode loads eBPF programs and opens perf events.\n\
             SystemCallFilter=@system-service bpf perf_event_open\n"
        } else {
            "SystemCallFilter=@system-service\nSystemCallFilter=~@privileged @resources\n"
        },
    )
}

/// The socket unit: systemd creates `/run/warden` (root, 0755) and the
/// socket (0666: every user may connect; policy decides the rest).
pub fn socket_unit(config: &Config) -> String {
    let socket = config
        .broker
        .socket
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| SYSTEM_SOCKET.to_owned());
    let group = config
        .broker
        .socket_group
        .as_ref()
        .map(|(name, _)| format!("SocketGroup={name}\n"))
        .unwrap_or_default();
    format!(
        "# Generated by wardenctl install.\n\
         [Unit]\n\
         Description=Warden local IPC broker socket\n\
         \n\
         [Socket]\n\
         ListenStream={socket}\n\
         SocketMode={mode:04o}\n\
         {group}\
         DirectoryMode=0755\n\
         RemoveOnStop=yes\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n",
        mode = config.broker.socket_mode,
    )
}

fn sysusers() -> String {
    format!(
        "# Generated by wardenctl install: the broker's service account and the\n\
         # administrators' group (members may see warden.status).\n\
         u {SERVICE_USER} - \"Warden IPC broker\" - -\n\
         g warden-admin -\n"
    )
}

fn tmpfiles() -> String {
    format!(
        "# Generated by wardenctl install: the broker's state directory.\n\
         d /var/lib/warden 0750 {SERVICE_USER} {SERVICE_USER} -\n"
    )
}

fn read_manifest(root: &Path) -> Result<Option<Manifest>, ServiceError> {
    let path = root.join(MANIFEST_PATH);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ServiceError::Manifest {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

/// Creates the directories of `rel` below `root` that are missing,
/// recording them.
fn ensure_parent(root: &Path, rel: &str, manifest: &mut Manifest) -> Result<(), ServiceError> {
    let mut cur = root.to_path_buf();
    let mut rel_cur = PathBuf::new();
    let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        cur.push(c);
        rel_cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                return Err(ServiceError::Occupied {
                    path: cur,
                    owner: m.uid(),
                })
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(io_err("creating", &cur))?;
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))
                    .map_err(io_err("setting the mode of", &cur))?;
                manifest.dirs.push(rel_cur.display().to_string());
            }
        }
    }
    Ok(())
}

fn write_file(
    root: &Path,
    rel: &str,
    text: &str,
    mode: u32,
    previous: &Manifest,
    manifest: &mut Manifest,
) -> Result<(), ServiceError> {
    ensure_parent(root, rel, manifest)?;
    let path = root.join(rel);
    if let Ok(m) = fs::symlink_metadata(&path) {
        if !previous.files.iter().any(|f| f == rel) || !m.is_file() {
            return Err(ServiceError::Occupied {
                path,
                owner: m.uid(),
            });
        }
    }
    let tmp = path.with_extension("wardenctl-tmp");
    fs::write(&tmp, text).map_err(io_err("writing", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("installing", &path))?;
    manifest.files.push(rel.to_owned());
    Ok(())
}

/// Installs the units, the sysusers.d and tmpfiles.d entries, and (if none
/// exists) the configuration, below `opts.root`. Idempotent: running it
/// again rewrites what it created before. Returns the manifest.
///
/// # Errors
/// [`ServiceError`] for an invalid configuration, something in the way
/// that install did not create, or a failing file operation.
pub fn install(
    opts: &InstallOptions,
    resolver: &dyn warden_policy::Resolver,
) -> Result<Manifest, ServiceError> {
    let root = &opts.root;
    let previous = read_manifest(root)?.unwrap_or_default();
    let mut manifest = Manifest {
        dirs: previous.dirs.clone(),
        config_created: previous.config_created,
        ..Manifest::default()
    };
    let config_path = root.join(CONFIG_PATH);
    let config_text = match fs::read_to_string(&config_path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let text = match &opts.config {
                Some(p) => fs::read_to_string(p).map_err(io_err("reading", p))?,
                None => default_installed_config(),
            };
            // Validate before writing anything.
            Config::parse(&text, &config_path.display().to_string(), resolver)?;
            ensure_parent(root, CONFIG_PATH, &mut manifest)?;
            fs::write(&config_path, &text).map_err(io_err("writing", &config_path))?;
            fs::set_permissions(&config_path, fs::Permissions::from_mode(0o644))
                .map_err(io_err("setting the mode of", &config_path))?;
            manifest.config_created = true;
            text
        }
        Err(e) => return Err(io_err("reading", &config_path)(e)),
    };
    let config = Config::parse(&config_text, &format!("/{CONFIG_PATH}"), resolver)?;
    let units: [(String, String); 4] = [
        (
            format!("{UNIT_DIR}/{SERVICE_UNIT}"),
            service_unit(&config, &opts.wardend),
        ),
        (format!("{UNIT_DIR}/{SOCKET_UNIT}"), socket_unit(&config)),
        (SYSUSERS_PATH.to_owned(), sysusers()),
        (TMPFILES_PATH.to_owned(), tmpfiles()),
    ];
    for (rel, text) in &units {
        write_file(root, rel, text, 0o644, &previous, &mut manifest)?;
    }
    ensure_parent(root, MANIFEST_PATH, &mut manifest)?;
    let mpath = root.join(MANIFEST_PATH);
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ServiceError::Manifest {
        path: mpath.clone(),
        reason: e.to_string(),
    })?;
    fs::write(&mpath, text).map_err(io_err("writing", &mpath))?;
    Ok(manifest)
}

/// Removes exactly what install created; the configuration (and the state
/// directory, if it holds anything else) only with `purge`. A second run
/// finds no manifest and does nothing. Returns the paths removed.
///
/// # Errors
/// [`ServiceError`] for an unreadable manifest or a failing removal.
pub fn uninstall(root: &Path, purge: bool) -> Result<Vec<PathBuf>, ServiceError> {
    let Some(manifest) = read_manifest(root)? else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    let mut remove = |path: PathBuf| -> Result<(), ServiceError> {
        match fs::remove_file(&path) {
            Ok(()) => {
                removed.push(path);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    };
    for f in &manifest.files {
        remove(root.join(f))?;
    }
    if purge && manifest.config_created {
        remove(root.join(CONFIG_PATH))?;
    }
    remove(root.join(MANIFEST_PATH))?;
    for d in manifest.dirs.iter().rev() {
        let path = root.join(d);
        // Only if empty: anything else in it is not ours to delete.
        if fs::remove_dir(&path).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

/// One installed path, for the report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PathState {
    /// The path (absolute, inside the root).
    pub path: String,
    /// Whether it exists.
    pub exists: bool,
    /// Owner uid, if it exists.
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// Mode, as octal text.
    pub mode: Option<String>,
}

/// The installed state, for `wardenctl dump`.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledState {
    /// Whether a manifest exists (install ran and uninstall did not).
    pub installed: bool,
    /// Every path install manages.
    pub paths: Vec<PathState>,
    /// The configuration in effect (installed file, else the embedded default).
    pub config_source: String,
    /// The capabilities the unit grants, with reasons.
    pub capabilities: Vec<Capability>,
    /// Whether the broker needs full root (never for the core).
    pub needs_root: bool,
    /// Whether the `warden` service account exists in the root's user
    /// database (`etc/passwd` of the root; the system database for `/`).
    pub service_user_exists: bool,
    /// The effective configuration, summarized.
    pub config: ConfigSummary,
}

/// The settings of the effective configuration that `dump` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigSummary {
    /// Socket path (`null`: the default for the broker's uid).
    pub socket: Option<String>,
    /// Socket file mode, octal text.
    pub socket_mode: String,
    /// Number of policy rules.
    pub rules: usize,
    /// Learning mode enabled.
    pub learn: bool,
    /// Warnings the configuration produced.
    pub warnings: Vec<String>,
}

fn service_user_exists(root: &Path) -> bool {
    if root == Path::new("/") {
        return warden_sys::user_by_name(SERVICE_USER)
            .ok()
            .flatten()
            .is_some();
    }
    fs::read_to_string(root.join("etc/passwd"))
        .map(|t| t.lines().any(|l| l.split(':').next() == Some(SERVICE_USER)))
        .unwrap_or(false)
}

/// Reports what is installed below `root`.
///
/// # Errors
/// [`ServiceError`] for an unreadable manifest or invalid installed config.
pub fn installed_state(
    root: &Path,
    resolver: &dyn warden_policy::Resolver,
) -> Result<InstalledState, ServiceError> {
    let manifest = read_manifest(root)?;
    let rels = [
        format!("{UNIT_DIR}/{SERVICE_UNIT}"),
        format!("{UNIT_DIR}/{SOCKET_UNIT}"),
        SYSUSERS_PATH.to_owned(),
        TMPFILES_PATH.to_owned(),
        CONFIG_PATH.to_owned(),
        MANIFEST_PATH.to_owned(),
    ];
    let paths = rels
        .iter()
        .map(|rel| {
            let p = root.join(rel);
            let m = fs::symlink_metadata(&p).ok();
            PathState {
                path: p.display().to_string(),
                exists: m.is_some(),
                uid: m.as_ref().map(MetadataExt::uid),
                gid: m.as_ref().map(MetadataExt::gid),
                mode: m.as_ref().map(|m| format!("{:04o}", m.mode() & 0o7777)),
            }
        })
        .collect();
    let config_path = root.join(CONFIG_PATH);
    let config = if config_path.exists() {
        Config::load(&config_path, resolver)?
    } else {
        Config::embedded_default(resolver)?
    };
    Ok(InstalledState {
        installed: manifest.is_some(),
        paths,
        config_source: config.source.clone(),
        capabilities: capabilities(&config),
        needs_root: false,
        service_user_exists: service_user_exists(root),
        config: ConfigSummary {
            socket: config
                .broker
                .socket
                .as_ref()
                .map(|p| p.display().to_string()),
            socket_mode: format!("{:04o}", config.broker.socket_mode),
            rules: config.policy.rule_count(),
            learn: config.learn.enabled,
            warnings: config.warnings.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_policy::StaticResolver;

    #[test]
    fn installed_config_names_the_socket_and_is_valid() {
        let text = default_installed_config();
        assert!(text.contains("socket = \"/run/warden/warden.sock\""));
        let c = Config::parse(&text, "x", &StaticResolver::default());
        assert_eq!(
            c.ok().and_then(|c| c.broker.socket),
            Some(PathBuf::from(SYSTEM_SOCKET))
        );
    }

    #[test]
    fn core_needs_no_capabilities_and_the_unit_says_so() {
        let c = Config::embedded_default(&StaticResolver::default());
        let Ok(c) = c else {
            panic!("default config invalid")
        };
        assert!(capabilities(&c).is_empty());
        let unit = service_unit(&c, Path::new("/usr/bin/wardend"));
        assert!(unit.contains("CapabilityBoundingSet=\n"));
        assert!(unit.contains("User=warden"));
        assert!(
            !unit.contains("PrivateUsers=yes"),
            "a user namespace would hide callers' uids"
        );
    }
}

/// Resolves user and group names in rules through the system database.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl warden_policy::Resolver for SystemResolver {
    fn user_uid(&self, name: &str) -> Option<u32> {
        warden_sys::user_by_name(name).ok().flatten().map(|u| u.uid)
    }
    fn group_gid(&self, name: &str) -> Option<u32> {
        warden_sys::group_by_name(name).ok().flatten()
    }
}
