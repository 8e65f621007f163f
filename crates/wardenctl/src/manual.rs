//! The manual: the command as `--help`, the man page and the shell
//! completions show it, all from the one clap definition in [`crate::cli`].
//!
//! [`command`] adds what clap's derive does not say: each subcommand's
//! examples, and the global options under a heading of their own, after
//! the subcommand's own. [`man_page`] renders one roff page (the whole
//! command, or one subcommand) with OPTIONS for every subcommand, EXIT
//! STATUS, ENVIRONMENT, FILES, EXAMPLES and SEE ALSO; it names only pages
//! that ship (`wardenctl(1)`, `wardend(8)`). [`visible`] is the command
//! without its internal helpers (`learn-exec`), for completions.

use clap::{Arg, ArgAction, CommandFactory};

use crate::cli::Cli;
use crate::error::EXIT_CODES_HELP;

/// Examples per subcommand (space-separated path), shown after `--help`
/// and in the man page. `learn` keeps the examples its definition has.
const EXAMPLES: &[(&str, &str)] = &[
    ("ping", "wardenctl ping\nwardenctl --json ping"),
    ("whoami", "wardenctl whoami"),
    ("version", "wardenctl version"),
    ("status", "sudo wardenctl status\nwardenctl --json status | jq '.connection_list'"),
    ("reload", "sudo wardenctl reload\nsudo wardenctl --json reload"),
    ("hosts", "sudo wardenctl hosts\nsudo wardenctl --json hosts"),
    ("list", "wardenctl list\nwardenctl --json list | jq -r '.methods[].name'"),
    ("hosts restart", "sudo wardenctl hosts restart agent"),
    (
        "module load",
        "sudo wardenctl module load agent /usr/lib/warden/modules/libwarden_example_echo.so",
    ),
    (
        "module unload",
        "sudo wardenctl module unload agent example-echo\nsudo wardenctl module unload agent /usr/lib/warden/modules/libwarden_example_echo.so",
    ),
    (
        "module reload",
        "sudo wardenctl module reload agent example-echo\nsudo wardenctl --json module reload agent example-echo",
    ),
    (
        "monitor",
        "sudo wardenctl monitor --method 'net.**'\nsudo wardenctl monitor --user alice --count 10 --json",
    ),
    ("top", "sudo wardenctl top --interval 2s\nsudo wardenctl --json top"),
    ("metrics", "sudo wardenctl metrics\nsudo wardenctl metrics --prometheus > /var/lib/node_exporter/warden.prom"),
    (
        "call",
        "wardenctl call warden.echo '{\"hi\": 1}'\necho '{\"hi\": 1}' | wardenctl call warden.echo -\nwardenctl call net.vpn.connect @params.json\nwardenctl call --session c2 example.echo",
    ),
    ("subscribe", "wardenctl subscribe net.vpn.state\nwardenctl subscribe 'news.**' --count 1"),
    ("publish", "wardenctl publish news.local '{\"text\": \"hello\"}'"),
    (
        "policy explain",
        "wardenctl policy explain --user alice call net.vpn.connect\nwardenctl policy explain --user bob --group netdev --config ./warden.toml subscribe net.vpn.state",
    ),
    ("completions", "wardenctl completions bash > ~/.local/share/bash-completion/completions/wardenctl"),
    (
        "install",
        "sudo wardenctl install\nsudo wardenctl install --config ./warden.toml --force\nwardenctl install --root /srv/image --allow-insecure-root",
    ),
    ("uninstall", "sudo wardenctl uninstall\nsudo wardenctl uninstall --purge"),
    ("dump", "sudo wardenctl dump\nwardenctl dump --root /srv/image --json"),
    ("man", "wardenctl man | man -l -\nwardenctl man call | man -l -"),
    (
        "invite create",
        "wardenctl invite create --role vpn-helper --expires 15m --output ~/vpn.token\nwardenctl invite create --role vpn-helper --for-user bob --uses 3 --label 'bob, laptop'",
    ),
    ("invite list", "wardenctl invite list\nsudo wardenctl --json invite list"),
    ("invite revoke", "wardenctl invite revoke dr7fka5j"),
];

/// The heading the global options are listed under, after a subcommand's
/// own.
const GLOBAL_HEADING: &str = "Global options";

/// The environment `wardenctl` reads.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "WARDEN_SOCKET",
        "The broker socket, as --socket (which wins over it).",
    ),
    (
        "WARDEN_INVITATION",
        "An invitation token to join with (as --invite-file, which wins over it). wardenctl removes it from its environment first thing and overwrites its bytes, so /proc/PID/environ no longer shows it.",
    ),
    (
        "XDG_RUNTIME_DIR",
        "Where a broker run by a user listens ($XDG_RUNTIME_DIR/warden/warden.sock), used when the system socket does not exist.",
    ),
];

/// The files `wardenctl` uses.
const FILES: &[(&str, &str)] = &[
    ("/run/warden/warden.sock", "The system broker's socket."),
    (
        "$XDG_RUNTIME_DIR/warden/warden.sock",
        "A broker run by a user (wardend not as root).",
    ),
    (
        "/etc/warden/warden.toml",
        "The installed broker configuration (install writes it, policy explain and dump read it).",
    ),
    (
        "/etc/warden/warden.toml.wardenctl-old",
        "The configuration install --config FILE --force replaced.",
    ),
    (
        "/var/lib/warden-install/manifest.json",
        "What install created, so uninstall removes exactly that.",
    ),
    (
        "/etc/systemd/system/warden.service, /etc/systemd/system/warden.socket",
        "The units install writes.",
    ),
];

/// The command with the examples and the global-options heading.
#[must_use]
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.get_id().to_string())
        .collect();
    for id in globals {
        cmd = cmd.mut_arg(id, |a| a.help_heading(GLOBAL_HEADING));
    }
    for (path, text) in EXAMPLES {
        let names: Vec<&str> = path.split(' ').collect();
        cmd = with_sub(cmd, &names, &|c: clap::Command| {
            if c.get_after_help().is_some() {
                return c;
            }
            c.after_help(format!("Examples:\n  {}", text.replace('\n', "\n  ")))
        });
    }
    cmd
}

/// `f` applied to the subcommand at `path` (each name a level).
fn with_sub(
    cmd: clap::Command,
    path: &[&str],
    f: &dyn Fn(clap::Command) -> clap::Command,
) -> clap::Command {
    match path.split_first() {
        None => f(cmd),
        Some((first, rest)) => {
            let first = (*first).to_owned();
            if cmd.find_subcommand(&first).is_none() {
                return cmd;
            }
            cmd.mut_subcommand(first, |c| with_sub(c, rest, f))
        }
    }
}

/// The command without its hidden subcommands (the internal
/// `learn-exec`), for shell completions: clap's generators list hidden
/// subcommands too. (Only the top level has hidden ones.)
#[must_use]
pub fn visible(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new("wardenctl").version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    for a in cmd.get_arguments() {
        out = out.arg(a.clone());
    }
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(s.clone());
    }
    out
}

/// The man page of `wardenctl` (`path` empty) or of one of its
/// subcommands (`["policy", "explain"]`), as roff.
///
/// # Errors
/// A message naming the known subcommands, for a `path` that is not one.
pub fn man_page(path: &[String]) -> Result<String, String> {
    let mut root = command();
    root.build();
    let mut cmd = &root;
    for name in path {
        cmd = cmd
            .get_subcommands()
            .find(|s| !s.is_hide_set() && s.get_name() == name)
            .ok_or_else(|| {
                format!(
                    "no manual for {:?}: wardenctl man takes one of {}",
                    path.join(" "),
                    subcommand_paths(&root).join(", ")
                )
            })?;
    }
    let full = std::iter::once("wardenctl")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>();
    let mut r = Roff::default();
    let title = full.join("-");
    r.raw(&format!(
        ".TH {} 1 \"\" \"wardenctl {}\" \"User Commands\"",
        roff(&title),
        roff(env!("CARGO_PKG_VERSION"))
    ));
    r.section("NAME");
    r.text(&format!(
        "{} - {}",
        title,
        cmd.get_about().map(ToString::to_string).unwrap_or_default()
    ));
    r.section("SYNOPSIS");
    r.synopsis(&full.join(" "), cmd);
    if let Some(long) = cmd.get_long_about() {
        r.section("DESCRIPTION");
        r.paragraphs(&long.to_string());
    }
    if path.is_empty() {
        r.section("OPTIONS");
        r.options(cmd.get_arguments().filter(|a| a.is_global_set()));
        r.section("COMMANDS");
        r.text(
            "Each command's own options come first in its --help; the options above \
             apply to every command. wardenctl man COMMAND prints a command's page alone.",
        );
        for (name, sub) in subcommands(&root) {
            r.raw(&format!(".SS \"{}\"", roff(&format!("wardenctl {name}"))));
            r.command(&format!("wardenctl {name}"), sub);
        }
    } else {
        r.section("OPTIONS");
        r.options(own_args(cmd));
        r.section("GLOBAL OPTIONS");
        r.options(cmd.get_arguments().filter(|a| a.is_global_set()));
        let subs = subcommands(cmd);
        if !subs.is_empty() {
            r.section("COMMANDS");
            for (name, sub) in subs {
                let name = format!("{} {name}", full.join(" "));
                r.raw(&format!(".SS \"{}\"", roff(&name)));
                r.command(&name, sub);
            }
        }
    }
    r.section("EXIT STATUS");
    r.preformatted(EXIT_CODES_HELP);
    r.section("ENVIRONMENT");
    for (name, text) in ENVIRONMENT {
        r.item(name, text);
    }
    r.section("FILES");
    for (name, text) in FILES {
        r.item(name, text);
    }
    r.section("EXAMPLES");
    let examples: Vec<&str> = EXAMPLES
        .iter()
        .filter(|(p, _)| path.is_empty() || *p == path.join(" "))
        .map(|(_, t)| *t)
        .collect();
    r.preformatted(&examples.join("\n"));
    r.section("SEE ALSO");
    r.text(if path.is_empty() {
        "wardend(8); the guides in the Warden source tree: README.md, docs/config.md, docs/protocol.md, docs/learning-mode.md."
    } else {
        "wardenctl(1), wardend(8)"
    });
    Ok(r.out)
}

/// The visible subcommands below `cmd`, depth first, as paths relative to
/// it (`policy explain`), leaves and groups alike.
fn subcommands(cmd: &clap::Command) -> Vec<(String, &clap::Command)> {
    let mut out = Vec::new();
    for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if s.get_name() == "help" {
            continue;
        }
        out.push((s.get_name().to_owned(), s));
        for (name, sub) in subcommands(s) {
            out.push((format!("{} {name}", s.get_name()), sub));
        }
    }
    out
}

/// Every subcommand path `wardenctl man` accepts.
fn subcommand_paths(root: &clap::Command) -> Vec<String> {
    subcommands(root).into_iter().map(|(n, _)| n).collect()
}

/// A subcommand's own arguments: not the globals, not the generated help.
fn own_args(cmd: &clap::Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::HelpLong))
}

/// Text for roff: backslashes and hyphens escaped, and a line that would
/// start with a control character (`.` or `'`) guarded.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A roff page being written.
#[derive(Default)]
struct Roff {
    out: String,
}

impl Roff {
    fn raw(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    fn section(&mut self, name: &str) {
        self.raw(&format!(".SH \"{name}\""));
    }

    fn text(&mut self, text: &str) {
        self.raw(&roff(text));
    }

    fn paragraphs(&mut self, text: &str) {
        for (i, p) in text.split("\n\n").enumerate() {
            if i > 0 {
                self.raw(".PP");
            }
            self.text(p);
        }
    }

    fn preformatted(&mut self, text: &str) {
        self.raw(".PP\n.nf");
        self.text(text);
        self.raw(".fi");
    }

    fn item(&mut self, tag: &str, text: &str) {
        self.raw(".TP");
        self.raw(&format!("\\fB{}\\fR", roff(tag)));
        self.text(text);
    }

    fn synopsis(&mut self, name: &str, cmd: &clap::Command) {
        let mut line = format!("\\fB{}\\fR [\\fIOPTIONS\\fR]", roff(name));
        for a in own_args(cmd).filter(|a| a.is_positional()) {
            line.push(' ');
            line.push_str(&positional(a));
        }
        if cmd.has_subcommands() {
            line.push_str(" \\fICOMMAND\\fR");
        }
        self.raw(&line);
    }

    /// One subcommand within the page: what it does, its synopsis, its
    /// own options, its examples.
    fn command(&mut self, name: &str, cmd: &clap::Command) {
        let about = cmd
            .get_long_about()
            .or(cmd.get_about())
            .map(ToString::to_string)
            .unwrap_or_default();
        self.paragraphs(&about);
        self.raw(".PP");
        self.synopsis(name, cmd);
        let own: Vec<&Arg> = own_args(cmd).collect();
        if !own.is_empty() {
            self.raw(".PP\nOptions:");
            self.options(own.into_iter());
        }
        if let Some(after) = cmd.get_after_help() {
            self.preformatted(&after.to_string());
        }
    }

    fn options<'a>(&mut self, args: impl Iterator<Item = &'a Arg>) {
        for a in args.filter(|a| !a.is_hide_set()) {
            if matches!(a.get_action(), ArgAction::Help | ArgAction::HelpLong) {
                continue;
            }
            let mut tag = if a.is_positional() {
                positional(a)
            } else {
                let mut names = Vec::new();
                if let Some(s) = a.get_short() {
                    names.push(format!("\\fB\\-{s}\\fR"));
                }
                if let Some(l) = a.get_long() {
                    names.push(format!("\\fB\\-\\-{}\\fR", roff(l)));
                }
                let mut t = names.join(", ");
                if a.get_action().takes_values() {
                    let value = a
                        .get_value_names()
                        .and_then(|v| v.first())
                        .map_or_else(|| a.get_id().to_string(), ToString::to_string);
                    t.push_str(&format!(" \\fI{}\\fR", roff(&value)));
                }
                t
            };
            if a.is_required_set() && !a.is_positional() {
                tag.push_str(" (required)");
            }
            self.raw(".TP");
            self.raw(&tag);
            let mut help = a
                .get_long_help()
                .or(a.get_help())
                .map(ToString::to_string)
                .unwrap_or_default();
            let help_len = help.trim_end().len();
            help.truncate(help_len);
            let mut more = |text: String| {
                if !help.is_empty() && !help.ends_with(['.', ':', '!', '?']) {
                    help.push('.');
                }
                help.push(' ');
                help.push_str(&text);
            };
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() && a.get_action().takes_values() {
                more(format!("One of: {}.", values.join(", ")));
            }
            let defaults: Vec<String> = a
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && a.get_action().takes_values() {
                more(format!("Default: {}.", defaults.join(", ")));
            }
            if let Some(env) = a.get_env() {
                more(format!("Environment: {}.", env.to_string_lossy()));
            }
            self.text(help.trim());
        }
    }
}

/// A positional argument in a synopsis: `\fINAME\fR`, bracketed when
/// optional, with `...` when it repeats.
fn positional(a: &Arg) -> String {
    let name = a.get_value_names().and_then(|v| v.first()).map_or_else(
        || a.get_id().to_string().to_uppercase(),
        ToString::to_string,
    );
    let many = matches!(a.get_action(), ArgAction::Append)
        || a.get_num_args().is_some_and(|n| n.max_values() > 1);
    let mut s = format!("\\fI{}\\fR", roff(&name));
    if many {
        s.push_str("...");
    }
    if a.is_last_set() {
        s = format!("\\-\\- {s}");
    }
    if a.is_required_set() {
        s
    } else {
        format!("[{s}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_belongs_to_a_subcommand() {
        let root = command();
        for (path, _) in EXAMPLES {
            let mut cmd = &root;
            for name in path.split(' ') {
                cmd = cmd
                    .find_subcommand(name)
                    .unwrap_or_else(|| panic!("examples for {path:?}, which does not exist"));
            }
            assert!(cmd.get_after_help().is_some(), "{path}");
        }
    }

    #[test]
    fn the_manual_command_is_consistent() {
        command().debug_assert();
        visible(&command()).debug_assert();
    }

    #[test]
    fn roff_escapes_what_would_be_markup() {
        assert_eq!(roff(".x\n'y\na-b\\c"), "\\&.x\n\\&'y\na\\-b\\ec");
    }
}
