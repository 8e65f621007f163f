//! `wardenctl`: the Warden command-line client.
//!
//! Thin by design: arguments → [`warden_client`] → output. Exit codes are
//! part of the interface (see `--help` and [`error`]).
//!
//! Layout: [`cli`] defines the arguments, [`cmds`] holds one module per
//! subcommand (or group of them), [`output`] prints results (`--json` or
//! for people) and errors, [`error`] is the one error type with its
//! exit-code table, and [`manual`] the help's examples, the man page and
//! what the completions offer. This file parses, dispatches, and maps the
//! result to the exit status.

use std::process::ExitCode;

use clap::FromArgMatches;

mod cli;
mod cmds;
mod error;
mod manual;
mod output;
mod term;

use cli::{Cli, Command, HostsCommand, InviteCommand, ModuleCommand, PolicyCommand};
use cmds::{
    basic, hosts, install, invite, learn, list, metrics, monitor, policy, pubsub, reload, status,
    top,
};
use error::{Error, EXIT_USAGE};
use output::Output;
use warden_proto::Payload;

fn main() -> ExitCode {
    // First, while this is the only thread: the secret leaves the
    // environment (and /proc/PID/environ) before anything could copy it.
    cmds::take_env_invitation();
    // The clap definition plus the examples and headings of the manual.
    let cli = match Cli::from_arg_matches(&manual::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let out = Output { json: cli.json };
    let result = match &cli.command {
        Command::LearnExec {
            gate_fd,
            landlock,
            arg0,
            command,
        } => learn::exec_helper(*gate_fd, landlock.as_deref(), arg0.as_deref(), command),
        _ => match run_local(&cli, out) {
            Some(r) => r.map(|()| ExitCode::SUCCESS),
            None => match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run(&cli, out)),
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_USAGE);
                }
            },
        },
    };
    match result {
        Ok(code) => code,
        // learn's stdout is the command's: its errors go to stderr.
        Err(e) if matches!(cli.command, Command::Learn { .. }) => {
            learn::print_error(&e, cli.json);
            ExitCode::from(e.exit_code())
        }
        Err(e) => {
            out.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// The commands that work on files, not on a running broker; `None` for
/// the others.
fn run_local(cli: &Cli, out: Output) -> Option<Result<(), Error>> {
    Some(match &cli.command {
        Command::Install {
            root,
            config,
            force,
            wardend,
            allow_insecure_root,
        } => install::install(
            out,
            &install::InstallArgs {
                root,
                config: config.as_deref(),
                force: *force,
                wardend: wardend.as_deref(),
                allow_insecure_root: *allow_insecure_root,
            },
        ),
        Command::Uninstall {
            root,
            purge,
            allow_insecure_root,
        } => install::uninstall(out, root, *purge, *allow_insecure_root),
        Command::Completions { shell } => {
            install::completions(*shell);
            Ok(())
        }
        Command::Man { command } => manual::man_page(command)
            .map(|page| print!("{page}"))
            .map_err(Error::Usage),
        Command::Dump { root } => install::dump(cli, out, root),
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    groups,
                    action,
                    name,
                    config: Some(path),
                },
        } => policy::explain_offline(out, &question(user, groups, action, name), path),
        _ => return None,
    })
}

/// The commands that talk to the broker: connects, then runs one.
/// `Ok` carries the exit status (`learn -- CMD` exits with CMD's).
async fn run(cli: &Cli, out: Output) -> Result<ExitCode, Error> {
    // Input first: a bad params file is a usage error even with no broker.
    let call_params = match &cli.command {
        Command::Call { params, .. } => Some(basic::read_params(params.as_deref())?),
        _ => None,
    };
    let client = cmds::connect(cli).await?;
    let c = &client;
    match &cli.command {
        Command::Ping => basic::ping(c, out).await?,
        Command::Whoami => basic::whoami(c, out).await?,
        Command::Version => basic::version(c, out).await?,
        Command::Call {
            method,
            session,
            target_uid,
            ..
        } => {
            let params = call_params.unwrap_or_else(Payload::null);
            let target = match (session, target_uid) {
                (Some(s), _) => Some(warden_client::CallTarget::Session(s.clone())),
                (None, Some(u)) => Some(warden_client::CallTarget::Uid(*u)),
                (None, None) => None,
            };
            basic::call(c, out, method, params, target).await?;
        }
        Command::Status => status::status(c, out).await?,
        Command::Reload => reload::reload(c, out).await?,
        Command::List => list::list(c, out).await?,
        Command::Hosts { command: None } => hosts::list(c, out).await?,
        Command::Hosts {
            command: Some(HostsCommand::Restart { name }),
        } => hosts::restart(c, out, name).await?,
        Command::Module { command } => {
            let (op, host, module) = match command {
                ModuleCommand::Load { host, module } => ("load", host, module),
                ModuleCommand::Unload { host, module } => ("unload", host, module),
                ModuleCommand::Reload { host, module } => ("reload", host, module),
            };
            hosts::module(c, out, op, host, module).await?
        }
        Command::Monitor {
            method,
            topic,
            user,
            payloads,
            count,
        } => {
            let filter = monitor::Filter {
                method: method.as_deref(),
                topic: topic.as_deref(),
                user: user.as_deref(),
                payloads: *payloads,
                count: *count,
            };
            monitor::monitor(c, out, &filter).await?;
        }
        Command::Top { interval } => top::top(c, out, *interval).await?,
        Command::Invite { command } => match command {
            InviteCommand::Create {
                role,
                expires,
                uses,
                for_user,
                for_group,
                label,
                output,
            } => {
                let args = invite::CreateArgs {
                    role,
                    expires: *expires,
                    uses: *uses,
                    for_user: for_user.as_deref(),
                    for_group: for_group.as_deref(),
                    label: label.as_deref(),
                    output: output.as_deref(),
                };
                invite::create(c, out, &args).await?
            }
            InviteCommand::List => invite::list(c, out).await?,
            InviteCommand::Revoke { id } => invite::revoke(c, out, id).await?,
        },
        Command::Metrics { prometheus } => metrics::metrics(c, out, *prometheus).await?,
        Command::Subscribe { topic, count } => pubsub::subscribe(c, topic, *count).await?,
        Command::Publish { topic, data } => pubsub::publish(c, out, topic, data).await?,
        Command::Policy {
            command:
                PolicyCommand::Explain {
                    user,
                    groups,
                    action,
                    name,
                    config: None,
                },
        } => policy::explain_live(c, out, &question(user, groups, action, name)).await?,
        Command::Learn {
            pid,
            duration,
            format,
            output,
            verify,
            command,
        } => {
            let args = learn::LearnArgs {
                pid: *pid,
                duration: *duration,
                format: *format,
                output: output.as_deref(),
                verify: verify.as_deref(),
                command,
                json: cli.json,
            };
            return learn::run(c, &args).await;
        }
        Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Dump { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Policy { .. }
        | Command::LearnExec { .. } => {
            return Err(Error::Usage(
                "this command is handled before connecting; this is a bug in wardenctl".into(),
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn question<'a>(
    user: &'a str,
    groups: &'a [String],
    action: &'a str,
    name: &'a str,
) -> policy::Question<'a> {
    policy::Question {
        user,
        groups,
        action,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_CONNECT, EXIT_REMOTE_ERROR, EXIT_REVOKED, EXIT_TIMEOUT};
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for (code, text) in [
            (0, "0  success"),
            (EXIT_REMOTE_ERROR, "1  the broker"),
            (EXIT_USAGE, "2  usage"),
            (EXIT_CONNECT, "3  could not connect"),
            (EXIT_TIMEOUT, "4  timed out"),
            (EXIT_REVOKED, "5  the broker revoked"),
        ] {
            assert!(help.contains(text), "{text} missing from --help");
            assert!(
                text.starts_with(&code.to_string()),
                "{text} is not exit {code}"
            );
        }
    }

    #[test]
    fn the_man_page_carries_the_exit_code_table() {
        let docs = install::generated_docs().unwrap_or_else(|e| panic!("{e}"));
        let man = docs
            .iter()
            .find(|(path, _)| path.ends_with("man1/wardenctl.1"))
            .map(|(_, text)| text.replace("\\-", "-"))
            .unwrap_or_else(|| panic!("no wardenctl.1 among {} generated files", docs.len()));
        for text in [
            "0  success",
            "3  could not connect",
            "4  timed out",
            "5  the broker revoked",
        ] {
            assert!(man.contains(text), "{text} missing from the man page");
        }
    }
}
