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
//! Install and uninstall run as root. Anything a less trusted account can
//! write is input, not configuration: the service's state directory
//! (`/var/lib/warden`, the `warden` account's), and an image somebody else
//! prepared. So:
//!
//! - every file is reached from the root's directory descriptor with
//!   [`warden_sys::Dir`]: one component at a time with
//!   `openat(O_NOFOLLOW|O_DIRECTORY)`, written under a fresh
//!   `O_CREAT|O_EXCL|O_NOFOLLOW` name, `fchmod`ed, `fsync`ed and
//!   `renameat`ed into place, removed with `unlinkat`: no symlink is ever
//!   followed, nothing outside the root is touched;
//! - the root and every directory on the paths install writes or removes
//!   must be owned by root (or the installing uid) and writable by nobody
//!   else (group-writable only by gid 0), checked as each is opened and,
//!   before anything is written, for all of them; `--allow-insecure-root`
//!   ([`InstallOptions::allow_insecure_root`]) skips that check, never the
//!   no-symlink rule;
//! - the manifest lives in `var/lib/warden-install` (root, 0755), is
//!   written root 0644, and is used only if it is still root's and not
//!   writable by group or others, and if every entry is one of the names
//!   install itself produces ([`known_files`], [`known_dirs`]: a closed
//!   set computed from the constants install uses, not a pattern); a
//!   manifest left at the old place inside the state directory
//!   ([`LEGACY_MANIFEST_PATH`]) is used only under that last rule;
//! - install never overwrites anything it did not create (except its own
//!   unit files), and never an existing configuration file.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_policy::{Config, DEFAULT_CONFIG};
use warden_sys::{
    Dir, FileKind, Meta, OpenDirError, ReadFileError, RemoveDirOutcome, RemoveError, StatError,
    WalkStep, WriteFileError,
};

pub mod wardend_cli;

/// The service and socket unit names.
pub const SERVICE_UNIT: &str = "warden.service";
/// The socket unit.
pub const SOCKET_UNIT: &str = "warden.socket";
/// The service account.
pub const SERVICE_USER: &str = "warden";
/// The system socket path: root's broker's default, and what an installed
/// configuration names.
pub const SYSTEM_SOCKET: &str = "/run/warden/warden.sock";
/// A user's own broker's socket, relative to `$XDG_RUNTIME_DIR`.
pub const USER_SOCKET: &str = "warden/warden.sock";

/// There is no default socket for a broker that is not root when
/// `$XDG_RUNTIME_DIR` is unset (or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not running as root and XDG_RUNTIME_DIR is not set")]
pub struct NoDefaultSocket;

/// A user's broker socket, `$XDG_RUNTIME_DIR/warden/warden.sock`, given the
/// value of `XDG_RUNTIME_DIR` (`None` if it is unset or empty).
pub fn user_socket_path(xdg_runtime_dir: Option<&OsStr>) -> Option<PathBuf> {
    xdg_runtime_dir
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(USER_SOCKET))
}

/// Where a broker running as `euid` listens when neither `--socket` nor the
/// config names a socket: [`SYSTEM_SOCKET`] for root, else
/// [`user_socket_path`]. `xdg_runtime_dir` is the value of
/// `XDG_RUNTIME_DIR`.
///
/// # Errors
/// [`NoDefaultSocket`] when `euid` is not root and there is no runtime
/// directory.
pub fn default_socket_path(
    euid: u32,
    xdg_runtime_dir: Option<&OsStr>,
) -> Result<PathBuf, NoDefaultSocket> {
    if euid == 0 {
        return Ok(PathBuf::from(SYSTEM_SOCKET));
    }
    user_socket_path(xdg_runtime_dir).ok_or(NoDefaultSocket)
}

/// The socket a client connects to when none is named: [`SYSTEM_SOCKET`]
/// if it exists, else the [`user_socket_path`] if that exists, else
/// [`SYSTEM_SOCKET`] (so the error names the system broker).
pub fn client_socket_path(xdg_runtime_dir: Option<&OsStr>) -> PathBuf {
    let system = Path::new(SYSTEM_SOCKET);
    if system.exists() {
        return system.to_owned();
    }
    user_socket_path(xdg_runtime_dir)
        .filter(|user| user.exists())
        .unwrap_or_else(|| system.to_owned())
}
/// Where the configuration lives, relative to the root.
pub const CONFIG_PATH: &str = "etc/warden/warden.toml";
/// Where `install --config FILE --force` keeps the configuration it
/// replaced, relative to the root. Not tracked by the manifest: it is the
/// operator's file, which uninstall (even `--purge`) leaves alone.
pub const CONFIG_OLD_PATH: &str = "etc/warden/warden.toml.wardenctl-old";
/// The install manifest, relative to the root: root 0644 in a root 0755
/// directory of its own (not the service's state directory).
pub const MANIFEST_PATH: &str = "var/lib/warden-install/manifest.json";
/// Where older versions kept the manifest: inside the state directory the
/// unit hands to the `warden` account, so whatever is there is untrusted.
/// Uninstall (and install, migrating) accepts it only if every entry is a
/// name install produces, and removes it.
pub const LEGACY_MANIFEST_PATH: &str = "var/lib/warden/install-manifest.json";
/// The largest manifest read (install writes a few hundred bytes).
pub const MANIFEST_MAX_BYTES: u64 = 64 * 1024;
/// The largest installed configuration file read.
pub const CONFIG_MAX_BYTES: u64 = 1024 * 1024;

/// The bash completion, relative to the root.
pub const BASH_COMPLETION_PATH: &str = "usr/share/bash-completion/completions/wardenctl";
/// The zsh completion.
pub const ZSH_COMPLETION_PATH: &str = "usr/share/zsh/vendor-completions/_wardenctl";
/// The fish completion.
pub const FISH_COMPLETION_PATH: &str = "usr/share/fish/vendor_completions.d/wardenctl.fish";
/// wardenctl's man page.
pub const WARDENCTL_MAN_PATH: &str = "usr/share/man/man1/wardenctl.1";
/// wardend's man page.
pub const WARDEND_MAN_PATH: &str = "usr/share/man/man8/wardend.8";
/// The generated documents install accepts in [`InstallOptions::extra`],
/// and nothing else.
pub const DOC_PATHS: [&str; 5] = [
    BASH_COMPLETION_PATH,
    ZSH_COMPLETION_PATH,
    FISH_COMPLETION_PATH,
    WARDENCTL_MAN_PATH,
    WARDEND_MAN_PATH,
];

const UNIT_DIR: &str = "etc/systemd/system";
const SYSUSERS_PATH: &str = "etc/sysusers.d/warden.conf";
const TMPFILES_PATH: &str = "etc/tmpfiles.d/warden.conf";
/// Mode of every directory install creates.
const DIR_MODE: u32 = 0o755;
/// Mode of every file install writes.
const FILE_MODE: u32 = 0o644;

fn unit_paths() -> [String; 4] {
    [
        format!("{UNIT_DIR}/{SERVICE_UNIT}"),
        format!("{UNIT_DIR}/{SOCKET_UNIT}"),
        SYSUSERS_PATH.to_owned(),
        TMPFILES_PATH.to_owned(),
    ]
}

/// Every file install may list in a manifest's `files`: the units, the
/// sysusers.d and tmpfiles.d entries, the completions and man pages. (The
/// configuration is not among them: it is tracked by `config_created` and
/// removed only with `--purge`.)
pub fn known_files() -> BTreeSet<String> {
    unit_paths()
        .into_iter()
        .chain(DOC_PATHS.iter().map(|p| (*p).to_owned()))
        .collect()
}

/// The proper ancestors of a root-relative path, shortest first.
fn ancestors(rel: &str) -> impl Iterator<Item = &str> {
    rel.match_indices('/').map(move |(i, _)| &rel[..i])
}

/// The directories install may create: every ancestor of a file it writes
/// (the known files, the configuration, the manifest).
fn install_dirs() -> BTreeSet<String> {
    let files = known_files();
    let mut dirs = BTreeSet::new();
    for f in files
        .iter()
        .map(String::as_str)
        .chain([CONFIG_PATH, MANIFEST_PATH])
    {
        dirs.extend(ancestors(f).map(str::to_owned));
    }
    dirs
}

/// Every directory a manifest may list in `dirs`: those of
/// [`install_dirs`], and the old manifest's directory, which older versions
/// created (it is removed only if empty).
pub fn known_dirs() -> BTreeSet<String> {
    let mut dirs = install_dirs();
    dirs.extend(ancestors(LEGACY_MANIFEST_PATH).map(str::to_owned));
    dirs
}

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
    if !config.hosts.is_empty() {
        caps.push(Capability {
            name: "CAP_SETUID",
            reason: "child hosts: start each host as its configured account",
        });
        caps.push(Capability {
            name: "CAP_SETGID",
            reason: "child hosts: give each host its account's group and supplementary groups",
        });
        caps.push(Capability {
            name: "CAP_KILL",
            reason: "child hosts: stop hosts running as other accounts (SIGTERM, then SIGKILL)",
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
    /// A configuration file to install instead of the embedded default.
    /// Validated first; where a configuration is installed already and
    /// differs from it, install refuses unless `force`.
    pub config: Option<PathBuf>,
    /// Replace an installed configuration that differs from `config`,
    /// keeping the old one at [`CONFIG_OLD_PATH`].
    pub force: bool,
    /// More files to install, root-relative path and contents: the shell
    /// completions and man pages, generated by the CLI from its own
    /// definitions, each at one of [`DOC_PATHS`] (any other path is
    /// refused); tracked and removed like the rest.
    pub extra: Vec<(String, String)>,
    /// Skip the owner and mode check of the root and the directories on
    /// install's paths (`--allow-insecure-root`). Symlinks are still never
    /// followed.
    pub allow_insecure_root: bool,
}

/// What uninstall does.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    /// The root install used.
    pub root: PathBuf,
    /// Also remove the configuration, if install created it.
    pub purge: bool,
    /// As [`InstallOptions::allow_insecure_root`].
    pub allow_insecure_root: bool,
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
    /// A directory could not be reached without following a symlink.
    #[error(transparent)]
    Dir(#[from] OpenDirError),
    /// A file could not be checked.
    #[error(transparent)]
    Stat(#[from] StatError),
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] ReadFileError),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteFileError),
    /// A file could not be removed.
    #[error(transparent)]
    Remove(#[from] RemoveError),
    /// The configuration to install is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] warden_policy::ConfigError),
    /// `--config` differs from the configuration installed already.
    #[error("refusing to replace {installed} with {given}: a configuration is installed already and differs from it; pass --force to replace it (the old one is kept as {installed}.wardenctl-old), or edit {installed} in place; nothing was changed")]
    ConfigDiffers {
        /// The installed configuration.
        installed: PathBuf,
        /// The file given with `--config`.
        given: PathBuf,
    },
    /// The installed configuration is not UTF-8 text.
    #[error("the configuration {path} is not UTF-8 text")]
    ConfigNotText {
        /// The file.
        path: PathBuf,
    },
    /// Something not created by Warden is where install would write.
    #[error("refusing to overwrite {path}: it exists and was not created by wardenctl install (owner uid {owner}); move it away first")]
    Occupied {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// The root, or a directory on install's paths, can be written by an
    /// account other than root (or the installing uid).
    #[error("refusing to use {path}: {reason} (owner uid {uid}, group gid {gid}, mode {mode:04o}), so another account could plant files or symlinks where install writes as root; make it owned by root and not writable by group or others (chown root:root, chmod go-w), or pass --allow-insecure-root if every account that can write there is trusted")]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// Its mode.
        mode: u32,
        /// What is wrong.
        reason: String,
    },
    /// The manifest at [`MANIFEST_PATH`] is not root's, or is writable by
    /// group or others.
    #[error("refusing the install manifest {path}: {reason} (owner uid {uid}, mode {mode:04o}); install writes it owned by root, mode 0644, and a manifest another account could have written cannot decide what root removes; check it, then fix its owner and mode or remove it")]
    UntrustedManifest {
        /// The manifest.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A manifest lists a path install never creates.
    #[error("refusing the install manifest {path}: it lists the {kind} {entry:?}, which is not one install creates{note}; nothing was changed")]
    UnknownEntry {
        /// The manifest.
        path: PathBuf,
        /// "file" or "directory".
        kind: &'static str,
        /// The entry, as written.
        entry: String,
        /// More for a manifest at the old place.
        note: &'static str,
    },
    /// Install was asked to write a file it does not know.
    #[error("refusing to install {path}: not one of the files install writes ({known})")]
    UnknownFile {
        /// The root-relative path asked for.
        path: String,
        /// The paths accepted.
        known: String,
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
    /// Files created (root-relative; each one of [`known_files`]).
    pub files: Vec<String>,
    /// Directories created (root-relative, each one of [`known_dirs`]),
    /// parents first.
    pub dirs: Vec<String>,
    /// True if install wrote the configuration file.
    pub config_created: bool,
}

/// What install did with the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ConfigOutcome {
    /// None was installed: install wrote `--config`'s or the default.
    Created,
    /// One was installed and no `--config` was given: kept as it is.
    Kept,
    /// `--config` has the same text as the installed one.
    Unchanged,
    /// `--force`: the installed one differed and was replaced; the old
    /// text is at `backup`.
    Replaced {
        /// Where the old configuration was kept.
        backup: PathBuf,
    },
}

/// What install did: the manifest it wrote, and what became of the
/// configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// The manifest.
    #[serde(flatten)]
    pub manifest: Manifest,
    /// The configuration's fate.
    pub config: ConfigOutcome,
}

/// The configuration text install writes when none exists: the embedded
/// default with the system socket path written out, and the embedded
/// default's implicit `owner_is_admin` spelled out as off (the `warden`
/// service account administers nothing).
pub fn default_installed_config() -> String {
    DEFAULT_CONFIG.replacen(
        "[broker]\n",
        &format!(
            "[broker]\nsocket = \"{SYSTEM_SOCKET}\"\n\
             # The service's own account is not an administrator (a per-user\n\
             # broker without --config administers itself; see docs/config.md).\n\
             owner_is_admin = false\n"
        ),
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
         {home}\
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
         {cgroups}\
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
        cgroups = if config.hosts.is_empty() {
            "ProtectControlGroups=yes\n"
        } else {
            "# Child hosts: each runs in a cgroup of its own below the service's,\n\
             # which systemd delegates to the broker (and stops as a whole).\n\
             Delegate=yes\n\
             ProtectControlGroups=no\n"
        },
        syscalls = syscall_filter(config),
        home = if config
            .hosts
            .iter()
            .any(|h| h.scope == warden_policy::HostScope::Session)
        {
            "# Per-session hosts get their user's XDG_RUNTIME_DIR (/run/user/UID),\n\
             # which ProtectHome=yes would hide: homes stay hidden (an empty\n\
             # tmpfs), /run/user is bound back in.\n\
             ProtectHome=tmpfs\n\
             BindPaths=-/run/user\n"
        } else {
            "ProtectHome=yes\n"
        },
    )
}

/// The unit's system call filter: the core's allow-list, plus what the
/// enabled features call. Child hosts inherit it (on top of their own
/// `deny_syscalls`).
fn syscall_filter(config: &Config) -> String {
    let mut allow = vec!["@system-service"];
    let mut why = Vec::new();
    if config.learn.enabled {
        allow.extend(["bpf", "perf_event_open"]);
        why.push("# Learning mode loads eBPF programs and opens perf events.\n");
    }
    if !config.hosts.is_empty() {
        allow.extend([
            "@setuid",
            "landlock_create_ruleset",
            "landlock_add_rule",
            "landlock_restrict_self",
        ]);
        why.push(
            "# Child hosts: the broker switches each to its account (setgroups,\n\
             # setresgid, setresuid) and applies its Landlock ruleset.\n",
        );
    }
    let mut out: String = why.concat();
    out.push_str(&format!("SystemCallFilter={}\n", allow.join(" ")));
    if !config.learn.enabled && config.hosts.is_empty() {
        out.push_str("SystemCallFilter=~@privileged @resources\n");
    }
    out
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

const LEGACY_NOTE: &str = " (a manifest at the old place, inside the state directory the warden service account owns, is trusted only if every entry is a name install uses: check it, and remove it by hand)";

impl Manifest {
    /// The first entry that is not one of the names install produces:
    /// `(kind, entry)`. Entries are compared as whole strings with the
    /// closed sets [`known_files`] and [`known_dirs`], so an absolute path,
    /// a `..`, or any other file is never accepted.
    pub fn unknown_entry(&self) -> Option<(&'static str, &str)> {
        let files = known_files();
        let dirs = known_dirs();
        self.files
            .iter()
            .find(|f| !files.contains(f.as_str()))
            .map(|f| ("file", f.as_str()))
            .or_else(|| {
                self.dirs
                    .iter()
                    .find(|d| !dirs.contains(d.as_str()))
                    .map(|d| ("directory", d.as_str()))
            })
    }

    /// Adds `other`'s entries (deduplicated, in order).
    fn merge(&mut self, other: &Manifest) {
        for f in &other.files {
            if !self.files.contains(f) {
                self.files.push(f.clone());
            }
        }
        for d in &other.dirs {
            if !self.dirs.contains(d) {
                self.dirs.push(d.clone());
            }
        }
        self.config_created |= other.config_created;
    }
}

/// Why a directory is not trusted, if it is not: owned by someone other
/// than root or `me`, writable by others, or writable by a group other
/// than root's.
fn distrust(meta: &Meta, me: u32) -> Option<String> {
    if meta.uid != 0 && meta.uid != me {
        return Some(if me == 0 {
            format!("it is owned by uid {}, not root", meta.uid)
        } else {
            format!(
                "it is owned by uid {}, neither root nor you (uid {me})",
                meta.uid
            )
        });
    }
    if meta.mode & 0o002 != 0 {
        return Some("it is writable by others".to_owned());
    }
    if meta.mode & 0o020 != 0 && meta.gid != 0 {
        return Some(format!(
            "it is writable by its group (gid {}), which is not root's",
            meta.gid
        ));
    }
    None
}

/// An install root, open, with the rule for the directories below it.
struct InstallRoot {
    dir: Dir,
    /// The installing uid (trusted besides root).
    me: u32,
    /// False with `--allow-insecure-root` (and for the read-only report).
    check: bool,
}

impl InstallRoot {
    fn open(path: &Path, allow_insecure: bool) -> Result<InstallRoot, ServiceError> {
        let root = InstallRoot {
            dir: Dir::open(path)?,
            me: warden_sys::effective_uid(),
            check: !allow_insecure,
        };
        root.check_dir(root.dir.path(), &root.dir.meta()?)?;
        Ok(root)
    }

    fn check_dir(&self, path: &Path, meta: &Meta) -> Result<(), ServiceError> {
        if !self.check {
            return Ok(());
        }
        match distrust(meta, self.me) {
            None => Ok(()),
            Some(reason) => Err(ServiceError::InsecureDir {
                path: path.to_owned(),
                uid: meta.uid,
                gid: meta.gid,
                mode: meta.mode,
                reason,
            }),
        }
    }

    fn walk(&self, rel: &Path, created: Option<&mut Vec<String>>) -> Result<Dir, ServiceError> {
        let create = created.is_some().then_some(DIR_MODE);
        let mut created = created;
        self.dir.walk(rel, create, |s: &WalkStep<'_>| {
            self.check_dir(s.dir.path(), &s.meta)?;
            if let (true, Some(list)) = (s.created, created.as_deref_mut()) {
                let rel = s.rel.display().to_string();
                if !list.contains(&rel) {
                    list.push(rel);
                }
            }
            Ok(())
        })
    }

    /// The directory holding `rel`, walked (and checked) from the root, and
    /// `rel`'s last component; missing directories are created 0755 and
    /// recorded in `created`.
    fn parent_create<'a>(
        &self,
        rel: &'a str,
        created: &mut Vec<String>,
    ) -> Result<(Dir, &'a OsStr), ServiceError> {
        let (dir, name) = split(rel);
        Ok((self.walk(Path::new(dir), Some(created))?, name))
    }

    /// The directory holding `rel`, or `None` if a directory on the way is
    /// missing.
    fn parent<'a>(&self, rel: &'a str) -> Result<Option<(Dir, &'a OsStr)>, ServiceError> {
        let (dir, name) = split(rel);
        match self.walk(Path::new(dir), None) {
            Ok(d) => Ok(Some((d, name))),
            Err(ServiceError::Dir(OpenDirError::Missing { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every directory install may create, checked where it exists,
    /// before anything is written or removed.
    fn preflight(&self) -> Result<(), ServiceError> {
        for d in install_dirs() {
            match self.walk(Path::new(&d), None) {
                Ok(_) | Err(ServiceError::Dir(OpenDirError::Missing { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the file `rel` (never through a symlink), or `None`.
    fn read(&self, rel: &str, max: u64) -> Result<Option<(Vec<u8>, Meta)>, ServiceError> {
        match self.parent(rel)? {
            Some((dir, name)) => Ok(dir.read_file(name, max)?),
            None => Ok(None),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The manifest at [`MANIFEST_PATH`], if it is root's, not writable by
    /// group or others, and lists only names install produces.
    fn manifest(&self) -> Result<Option<Manifest>, ServiceError> {
        let path = self.path(MANIFEST_PATH);
        let Some((bytes, meta)) = self.read(MANIFEST_PATH, MANIFEST_MAX_BYTES)? else {
            return Ok(None);
        };
        let reason = if meta.uid != 0 && meta.uid != self.me {
            Some("it is not owned by root")
        } else if meta.mode & 0o022 != 0 {
            Some("it is writable by group or others")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ServiceError::UntrustedManifest {
                path,
                uid: meta.uid,
                mode: meta.mode,
                reason,
            });
        }
        parse_manifest(&bytes, path, "").map(Some)
    }

    /// The directory of [`LEGACY_MANIFEST_PATH`] (the service's state
    /// directory): its parents are walked and checked, it is opened
    /// without following a symlink, but its owner is not checked (it is
    /// the service account's).
    fn legacy_dir(&self) -> Result<Option<(Dir, &'static OsStr)>, ServiceError> {
        let (dir, name) = split(LEGACY_MANIFEST_PATH);
        let (parent, last) = split(dir);
        let Some(p) = (match self.walk(Path::new(parent), None) {
            Ok(d) => Some(d),
            Err(ServiceError::Dir(OpenDirError::Missing { .. })) => None,
            Err(e) => return Err(e),
        }) else {
            return Ok(None);
        };
        Ok(p.open_dir_nofollow(last)?.map(|d| (d, name)))
    }

    /// A manifest at the old place, accepted only if every entry is a name
    /// install produces.
    fn legacy_manifest(&self) -> Result<Option<Manifest>, ServiceError> {
        let Some((dir, name)) = self.legacy_dir()? else {
            return Ok(None);
        };
        let Some((bytes, _)) = dir.read_file(name, MANIFEST_MAX_BYTES)? else {
            return Ok(None);
        };
        let mut m = parse_manifest(&bytes, self.path(LEGACY_MANIFEST_PATH), LEGACY_NOTE)?;
        // The old place was writable by the service account: its word that
        // install created the configuration is not taken, so `--purge`
        // never removes a configuration on the strength of it.
        m.config_created = false;
        Ok(Some(m))
    }

    /// Both manifests, merged; `None` if there is neither.
    fn manifests(&self) -> Result<(Option<Manifest>, bool), ServiceError> {
        let current = self.manifest()?;
        let legacy = self.legacy_manifest()?;
        let had_legacy = legacy.is_some();
        let merged = match (current, legacy) {
            (None, None) => None,
            (Some(m), None) | (None, Some(m)) => Some(m),
            (Some(mut m), Some(l)) => {
                m.merge(&l);
                Some(m)
            }
        };
        Ok((merged, had_legacy))
    }

    /// Removes the old-place manifest; its path if it was there.
    fn remove_legacy_manifest(&self) -> Result<Option<PathBuf>, ServiceError> {
        match self.legacy_dir()? {
            Some((dir, name)) if dir.unlink(name)? => Ok(Some(dir.path().join(name))),
            _ => Ok(None),
        }
    }
}

/// `rel`'s directory and last component (`("", rel)` for a top-level name).
fn split(rel: &str) -> (&str, &OsStr) {
    match rel.rsplit_once('/') {
        Some((dir, name)) => (dir, OsStr::new(name)),
        None => ("", OsStr::new(rel)),
    }
}

fn parse_manifest(
    bytes: &[u8],
    path: PathBuf,
    note: &'static str,
) -> Result<Manifest, ServiceError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ServiceError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if let Some((kind, entry)) = m.unknown_entry() {
        return Err(ServiceError::UnknownEntry {
            path,
            kind,
            entry: entry.to_owned(),
            note,
        });
    }
    Ok(m)
}

/// Installs the units, the sysusers.d and tmpfiles.d entries, and (if none
/// exists) the configuration, below `opts.root`. Idempotent: running it
/// again rewrites what it created before. A manifest at the old place is
/// migrated (read under the known-names rule, then removed). `--config`
/// is validated (errors name that file) before anything is written; over
/// an installed configuration with other text, install refuses unless
/// `opts.force`, which keeps the old text at [`CONFIG_OLD_PATH`]. Returns
/// the manifest and what became of the configuration.
///
/// # Errors
/// [`ServiceError::ConfigDiffers`] for a `--config` that would replace a
/// different installed configuration without `force`; [`ServiceError`]
/// for an invalid configuration, an insecure root or
/// directory ([`ServiceError::InsecureDir`]), a symlink on the way,
/// something in the way that install did not create, an untrusted or
/// unknown-entry manifest, or a failing file operation. The checks of every
/// directory and of the manifests come before anything is written.
pub fn install(
    opts: &InstallOptions,
    resolver: &dyn warden_policy::Resolver,
) -> Result<Installed, ServiceError> {
    for (rel, _) in &opts.extra {
        if !DOC_PATHS.contains(&rel.as_str()) {
            return Err(ServiceError::UnknownFile {
                path: rel.clone(),
                known: DOC_PATHS.join(", "),
            });
        }
    }
    let root = InstallRoot::open(&opts.root, opts.allow_insecure_root)?;
    root.preflight()?;
    let (previous, had_legacy) = root.manifests()?;
    let previous = previous.unwrap_or_default();
    let mut manifest = Manifest {
        dirs: previous.dirs.clone(),
        config_created: previous.config_created,
        ..Manifest::default()
    };
    let config_path = root.path(CONFIG_PATH);
    // `--config` first, validated under its own name, before anything is
    // written.
    let given = match &opts.config {
        Some(p) => {
            let text = fs::read_to_string(p).map_err(io_err("reading", p))?;
            Config::parse(&text, &p.display().to_string(), resolver)?;
            Some((p, text))
        }
        None => None,
    };
    let installed = match root.read(CONFIG_PATH, CONFIG_MAX_BYTES)? {
        Some((bytes, meta)) => Some((
            String::from_utf8(bytes).map_err(|_| ServiceError::ConfigNotText {
                path: config_path.clone(),
            })?,
            meta,
        )),
        None => None,
    };
    let (config_text, outcome) = match (installed, given) {
        (None, given) => {
            let text = match given {
                Some((_, text)) => text,
                None => {
                    let text = default_installed_config();
                    Config::parse(&text, &config_path.display().to_string(), resolver)?;
                    text
                }
            };
            let (dir, name) = root.parent_create(CONFIG_PATH, &mut manifest.dirs)?;
            dir.create_file_atomic(name, text.as_bytes(), FILE_MODE)?;
            manifest.config_created = true;
            (text, ConfigOutcome::Created)
        }
        (Some((old, _)), None) => (old, ConfigOutcome::Kept),
        (Some((old, _)), Some((_, new))) if old == new => (old, ConfigOutcome::Unchanged),
        (Some(_), Some((p, _))) if !opts.force => {
            return Err(ServiceError::ConfigDiffers {
                installed: config_path,
                given: p.clone(),
            });
        }
        (Some((old, meta)), Some((_, new))) => {
            // The old text first, so it is never lost; both keep the old
            // file's permission bits (an operator may have narrowed them).
            let mode = meta.mode & 0o777;
            let (dir, name) = root.parent_create(CONFIG_OLD_PATH, &mut manifest.dirs)?;
            dir.write_file_atomic(name, old.as_bytes(), mode)?;
            let (dir, name) = root.parent_create(CONFIG_PATH, &mut manifest.dirs)?;
            dir.write_file_atomic(name, new.as_bytes(), mode)?;
            manifest.config_created = true;
            (
                new,
                ConfigOutcome::Replaced {
                    backup: root.path(CONFIG_OLD_PATH),
                },
            )
        }
    };
    let config = Config::parse(&config_text, &format!("/{CONFIG_PATH}"), resolver)?;
    let [service, socket, sysusers_path, tmpfiles_path] = unit_paths();
    let units: [(String, String); 4] = [
        (service, service_unit(&config, &opts.wardend)),
        (socket, socket_unit(&config)),
        (sysusers_path, sysusers()),
        (tmpfiles_path, tmpfiles()),
    ];
    for (rel, text) in units.iter().chain(opts.extra.iter()) {
        let (dir, name) = root.parent_create(rel, &mut manifest.dirs)?;
        if let Some(m) = dir.stat_at(name)? {
            if !previous.files.iter().any(|f| f == rel) || m.kind != FileKind::Regular {
                return Err(ServiceError::Occupied {
                    path: dir.path().join(name),
                    owner: m.uid,
                });
            }
        }
        dir.write_file_atomic(name, text.as_bytes(), FILE_MODE)?;
        manifest.files.push(rel.clone());
    }
    // The manifest's directory first, so the list includes it if created.
    let (dir, name) = root.parent_create(MANIFEST_PATH, &mut manifest.dirs)?;
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ServiceError::Manifest {
        path: root.path(MANIFEST_PATH),
        reason: e.to_string(),
    })?;
    dir.write_file_atomic(name, text.as_bytes(), FILE_MODE)?;
    if had_legacy {
        root.remove_legacy_manifest()?;
    }
    Ok(Installed {
        manifest,
        config: outcome,
    })
}

/// Removes exactly what install created; the configuration only with
/// `purge`. Without `purge`, a configuration install created stays, and so
/// does the manifest, listing only it, so a later `uninstall --purge`
/// still removes it; once nothing of install's is left, a run does
/// nothing. Returns the paths removed.
///
/// # Errors
/// [`ServiceError`] for an insecure root or directory, a symlink on the
/// way, an unreadable or untrusted manifest, a manifest entry that is not a
/// name install produces (naming it), or a failing removal. Every check
/// comes before anything is removed.
/// Runs every check [`uninstall`] makes before it removes anything, and
/// removes nothing: so a caller can stop the service only once uninstall
/// is known to go ahead. True if there is something to uninstall (units,
/// not only a configuration an earlier uninstall kept).
///
/// # Errors
/// As [`uninstall`], for the checks.
pub fn uninstall_check(opts: &UninstallOptions) -> Result<bool, ServiceError> {
    let root = InstallRoot::open(&opts.root, opts.allow_insecure_root)?;
    let (Some(m), _) = root.manifests()? else {
        return Ok(false);
    };
    root.preflight()?;
    // A manifest with no files only remembers a kept configuration.
    Ok(!m.files.is_empty())
}

pub fn uninstall(opts: &UninstallOptions) -> Result<Vec<PathBuf>, ServiceError> {
    let root = InstallRoot::open(&opts.root, opts.allow_insecure_root)?;
    let (Some(manifest), had_legacy) = root.manifests()? else {
        return Ok(Vec::new());
    };
    root.preflight()?;
    let mut removed = Vec::new();
    let mut remove = |rel: &str| -> Result<(), ServiceError> {
        if let Some((dir, name)) = root.parent(rel)? {
            if dir.unlink(name)? {
                removed.push(dir.path().join(name));
            }
        }
        Ok(())
    };
    for f in &manifest.files {
        remove(f)?;
    }
    let config_kept = manifest.config_created
        && !opts.purge
        && root
            .parent(CONFIG_PATH)?
            .map(|(dir, name)| dir.stat_at(name))
            .transpose()?
            .flatten()
            .is_some();
    if opts.purge && manifest.config_created {
        remove(CONFIG_PATH)?;
    }
    if config_kept {
        // What is left of the install: the configuration it created.
        let left = Manifest {
            files: Vec::new(),
            dirs: manifest.dirs.clone(),
            config_created: true,
        };
        if left != manifest {
            let text = serde_json::to_string_pretty(&left).map_err(|e| ServiceError::Manifest {
                path: root.path(MANIFEST_PATH),
                reason: e.to_string(),
            })?;
            let (dir, name) = root.parent_create(MANIFEST_PATH, &mut Vec::new())?;
            dir.write_file_atomic(name, text.as_bytes(), FILE_MODE)?;
        }
    } else {
        remove(MANIFEST_PATH)?;
    }
    if had_legacy {
        removed.extend(root.remove_legacy_manifest()?);
    }
    // Deepest first; each only if empty: anything else in it is not ours.
    let mut dirs: Vec<&String> = manifest.dirs.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        if let Some((dir, name)) = root.parent(d)? {
            if dir.remove_dir(name)? == RemoveDirOutcome::Removed {
                removed.push(dir.path().join(name));
            }
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
    // A report: nothing is written, so the root's owner and mode are shown
    // (in `paths`), not enforced; files are still read without following
    // symlinks.
    let tree = InstallRoot::open(root, true)?;
    let exists = |rel: &str| -> Result<bool, ServiceError> {
        Ok(match tree.parent(rel) {
            Ok(Some((dir, name))) => dir.stat_at(name)?.is_some(),
            Ok(None) => false,
            // A symlinked or odd directory on the way: not an install.
            Err(ServiceError::Dir(_)) => false,
            Err(e) => return Err(e),
        })
    };
    let legacy = exists(LEGACY_MANIFEST_PATH)?;
    // A manifest that lists no files is what uninstall leaves to remember
    // the configuration it kept: not an install.
    let listed_files = match tree.read(MANIFEST_PATH, MANIFEST_MAX_BYTES) {
        Ok(Some((bytes, _))) => {
            serde_json::from_slice::<Manifest>(&bytes).map_or(true, |m| !m.files.is_empty())
        }
        Ok(None) | Err(ServiceError::Dir(_)) => false,
        Err(_) => exists(MANIFEST_PATH)?,
    };
    let installed = listed_files || legacy;
    let mut rels: Vec<String> = unit_paths().into();
    rels.extend([CONFIG_PATH.to_owned(), MANIFEST_PATH.to_owned()]);
    if legacy {
        rels.push(LEGACY_MANIFEST_PATH.to_owned());
    }
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
    let config = match tree.read(CONFIG_PATH, CONFIG_MAX_BYTES)? {
        Some((bytes, _)) => {
            let text = String::from_utf8(bytes).map_err(|_| ServiceError::ConfigNotText {
                path: config_path.clone(),
            })?;
            Config::parse(&text, &config_path.display().to_string(), resolver)?
        }
        None => Config::embedded_default(resolver)?,
    };
    Ok(InstalledState {
        installed,
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
    fn default_socket_is_the_system_one_for_root_else_the_users() {
        let xdg = Some(OsStr::new("/run/user/1000"));
        assert_eq!(
            default_socket_path(0, xdg),
            Ok(PathBuf::from("/run/warden/warden.sock"))
        );
        assert_eq!(
            default_socket_path(1000, xdg),
            Ok(PathBuf::from("/run/user/1000/warden/warden.sock"))
        );
        assert_eq!(default_socket_path(1000, None), Err(NoDefaultSocket));
        assert_eq!(
            default_socket_path(1000, Some(OsStr::new(""))),
            Err(NoDefaultSocket)
        );
        // Nothing exists under a runtime directory that does not: the
        // system socket is named.
        let missing = Some(OsStr::new("/nonexistent-warden-test"));
        if !Path::new(SYSTEM_SOCKET).exists() {
            assert_eq!(client_socket_path(missing), PathBuf::from(SYSTEM_SOCKET));
        }
    }

    #[test]
    fn core_needs_no_capabilities_and_the_unit_says_so() {
        // The embedded default with learning mode off: the core alone.
        let text = warden_policy::DEFAULT_CONFIG.replace("enabled = true", "enabled = false");
        let c = Config::parse(&text, "core.toml", &StaticResolver::default());
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

    fn meta(uid: u32, gid: u32, mode: u32) -> Meta {
        Meta {
            kind: FileKind::Directory,
            uid,
            gid,
            mode,
        }
    }

    #[test]
    fn the_known_names_are_plain_relative_paths_and_nothing_else_is_accepted() {
        let files = known_files();
        let dirs = known_dirs();
        assert_eq!(files.len(), 9, "{files:?}");
        for n in files.iter().chain(dirs.iter()) {
            assert!(
                !n.starts_with('/') && !n.ends_with('/') && !n.is_empty(),
                "{n}"
            );
            assert!(
                n.split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
                "{n}"
            );
        }
        // Every ancestor of what install writes, and the old manifest's
        // directory; not the files themselves.
        for d in [
            "etc",
            "etc/warden",
            "etc/systemd/system",
            "var/lib/warden-install",
            "var/lib/warden",
            "usr/share/man/man8",
        ] {
            assert!(dirs.contains(d), "{d}");
        }
        assert!(!dirs.contains("var/lib/warden-install/manifest.json"));
        let bad_files = [
            "../victim",
            "../../etc/shadow",
            "/etc/shadow",
            "etc/passwd",
            "etc/systemd/system/../../../victim",
            "./etc/systemd/system/warden.service",
            "etc/systemd/system//warden.service",
            "etc/systemd/system/warden.service/",
            CONFIG_PATH,
            MANIFEST_PATH,
            "",
        ];
        for bad in bad_files {
            let m = Manifest {
                files: vec![format!("{UNIT_DIR}/{SERVICE_UNIT}"), bad.to_owned()],
                ..Manifest::default()
            };
            assert_eq!(m.unknown_entry(), Some(("file", bad)), "{bad:?}");
        }
        for bad in ["..", "/", "/var/lib", "var/lib/..", "tmp", "home/user"] {
            let m = Manifest {
                dirs: vec!["etc".to_owned(), bad.to_owned()],
                ..Manifest::default()
            };
            assert_eq!(m.unknown_entry(), Some(("directory", bad)), "{bad:?}");
        }
        let all = Manifest {
            files: files.iter().cloned().collect(),
            dirs: dirs.iter().cloned().collect(),
            config_created: true,
        };
        assert_eq!(all.unknown_entry(), None);
    }

    #[test]
    fn a_directory_is_trusted_only_if_root_or_the_installer_alone_can_write_it() {
        assert_eq!(distrust(&meta(0, 0, 0o755), 0), None);
        assert_eq!(distrust(&meta(0, 0, 0o700), 0), None);
        // Group-writable by root's group: only root writes.
        assert_eq!(distrust(&meta(0, 0, 0o775), 0), None);
        let refused = [
            (meta(0, 0, 0o777), "writable by others"),
            (meta(0, 0, 0o1777), "writable by others"),
            (meta(0, 1000, 0o775), "writable by its group (gid 1000)"),
            (meta(1000, 1000, 0o755), "owned by uid 1000, not root"),
        ];
        for (m, why) in refused {
            let r = distrust(&m, 0);
            assert!(
                r.as_deref().is_some_and(|r| r.contains(why)),
                "{m:?}: {r:?}"
            );
        }
        // A non-root installer trusts its own directories too.
        assert_eq!(distrust(&meta(1000, 1000, 0o755), 1000), None);
        assert!(distrust(&meta(1001, 1001, 0o755), 1000).is_some());
    }

    /// A fresh directory under the temp dir, owned by whoever runs the test
    /// (trusted: root or the installing uid), mode 0755.
    fn temp_root(tag: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("warden-service-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }

    #[test]
    fn install_then_uninstall_with_purge_leaves_the_root_as_it_was(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let root = temp_root("roundtrip")?;
        let opts = InstallOptions {
            root: root.clone(),
            wardend: PathBuf::from("/usr/bin/wardend"),
            config: None,
            force: false,
            extra: vec![(WARDEND_MAN_PATH.to_owned(), "man".to_owned())],
            allow_insecure_root: false,
        };
        let m = install(&opts, &StaticResolver::default())?.manifest;
        assert!(m.config_created);
        assert_eq!(m.unknown_entry(), None);
        assert!(
            m.dirs.contains(&"var/lib/warden-install".to_owned()),
            "{m:?}"
        );
        assert_eq!(fs::read_to_string(root.join(WARDEND_MAN_PATH))?, "man");
        let mode = fs::symlink_metadata(root.join(MANIFEST_PATH))?.mode() & 0o7777;
        assert_eq!(mode, 0o644);
        // Idempotent.
        let again = install(&opts, &StaticResolver::default())?;
        assert_eq!(again.manifest.files, m.files);
        assert_eq!(again.config, ConfigOutcome::Kept);
        // A file install does not know is refused before anything is written.
        let mut odd = opts.clone();
        odd.extra = vec![("etc/passwd".to_owned(), "x".to_owned())];
        assert!(matches!(
            install(&odd, &StaticResolver::default()),
            Err(ServiceError::UnknownFile { .. })
        ));
        assert!(!root.join("etc/passwd").exists());
        let removed = uninstall(&UninstallOptions {
            root: root.clone(),
            purge: true,
            allow_insecure_root: false,
        })?;
        assert!(removed.contains(&root.join(MANIFEST_PATH)), "{removed:?}");
        assert_eq!(
            fs::read_dir(&root)?.count(),
            0,
            "everything install made is gone"
        );
        fs::remove_dir(&root)?;
        Ok(())
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
