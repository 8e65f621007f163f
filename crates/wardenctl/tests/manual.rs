//! The manual as a user meets it: `wardenctl man`, each command's
//! `--help`, and the shell completions, from the built binary.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use warden_testkit::output_with_timeout;

fn ctl(args: &[&str]) -> anyhow::Result<Output> {
    output_with_timeout(
        Command::new(env!("CARGO_BIN_EXE_wardenctl")).args(args),
        Duration::from_secs(30),
    )
}

fn stdout_ok(args: &[&str]) -> anyhow::Result<String> {
    let out = ctl(args)?;
    anyhow::ensure!(
        out.status.success(),
        "wardenctl {args:?}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names listed under `heading:` in a `--help` text (the first word
/// of each indented line up to the next blank line).
fn listed(help: &str, heading: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The long options a `--help` lists under "Options:" (the command's
/// own), without --help.
fn own_options(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Options:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            // `  -h, --help  Print help` or `      --socket <PATH>  ...`:
            // the option names open the line.
            l.split_whitespace()
                .map(|w| w.trim_end_matches(','))
                .take_while(|w| w.starts_with('-'))
                .find(|w| w.starts_with("--"))
                .map(str::to_owned)
        })
        .filter(|w| w != "--help")
        .collect()
}

/// Every command path `wardenctl --help` leads to (`policy explain`
/// included), found the way a user would: through the help.
fn command_paths() -> anyhow::Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout_ok(&args)?;
        for name in listed(&help, "Commands:") {
            if name == "help" {
                continue;
            }
            let mut p = path.clone();
            p.push(name);
            todo.push(p.clone());
            out.push(p);
        }
    }
    Ok(out)
}

#[test]
fn the_man_page_documents_every_command_and_its_options() -> anyhow::Result<()> {
    let man = stdout_ok(&["man"])?.replace("\\-", "-");
    let paths = command_paths()?;
    assert!(paths.len() >= 15, "{paths:?}");
    for path in &paths {
        let name = format!("wardenctl {}", path.join(" "));
        assert!(
            man.contains(&format!(".SS \"{name}\"")),
            "no section for {name}"
        );
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout_ok(&args)?;
        for opt in own_options(&help) {
            assert!(
                man.contains(&format!("\\fB{opt}\\fR")),
                "{opt} of {name} missing from the man page"
            );
        }
        // Its own page, too.
        let mut args: Vec<&str> = vec!["man"];
        args.extend(path.iter().map(String::as_str));
        let page = stdout_ok(&args)?.replace("\\-", "-");
        assert!(
            page.contains(&format!(".TH {} 1", name.replace(' ', "-"))),
            "{name}"
        );
        assert!(page.contains(".SH \"EXIT STATUS\""), "{name}");
    }
    for section in [
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(man.contains(&format!(".SH \"{section}\"")), "no {section}");
    }
    for code in [
        "0  success",
        "3  could not connect",
        "5  the broker revoked",
    ] {
        assert!(man.contains(code), "{code} missing from EXIT STATUS");
    }
    assert!(
        !man.contains("learn-exec"),
        "the internal helper is documented"
    );
    Ok(())
}

#[test]
fn the_man_page_names_only_pages_that_exist() -> anyhow::Result<()> {
    // The pages install ships: the only ones a reader can open.
    let shipped: BTreeSet<&str> = ["wardenctl(1)", "wardend(8)"].into();
    let mut pages = vec![stdout_ok(&["man"])?];
    pages.push(stdout_ok(&["man", "call"])?);
    pages.push(stdout_ok(&["man", "policy", "explain"])?);
    for page in pages {
        let text = page
            .replace("\\-", "-")
            .replace("\\fB", "")
            .replace("\\fR", "");
        let bytes = text.as_bytes();
        for (i, w) in bytes.windows(3).enumerate() {
            if !(w[0] == b'(' && w[1].is_ascii_digit() && w[2] == b')') {
                continue;
            }
            let start = text[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
                .map_or(0, |s| s + 1);
            let reference = &text[start..i + 3];
            if start == i {
                continue; // "(1)" alone, not a page reference
            }
            assert!(
                shipped.contains(reference),
                "the man page names {reference}, which does not ship"
            );
        }
    }
    Ok(())
}

#[test]
fn man_for_an_unknown_command_is_a_usage_error_listing_the_known_ones() -> anyhow::Result<()> {
    let out = ctl(&["man", "nosuch"])?;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuch") && err.contains("call") && err.contains("policy explain"),
        "{err}"
    );
    Ok(())
}

#[test]
fn each_commands_help_lists_its_own_options_first_and_examples() -> anyhow::Result<()> {
    for path in command_paths()? {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = stdout_ok(&args)?;
        if help.contains("Commands:") {
            continue; // a group (policy): its commands carry the examples
        }
        assert!(
            help.contains("Examples:\n  "),
            "{path:?}: no examples:\n{help}"
        );
        let global = help
            .find("Global options:")
            .ok_or_else(|| anyhow::anyhow!("{path:?}: no global options heading:\n{help}"))?;
        for opt in own_options(&help) {
            let at = help.find(&opt).unwrap_or(usize::MAX);
            assert!(
                at < global,
                "{path:?}: {opt} after the global options:\n{help}"
            );
        }
    }
    Ok(())
}

#[test]
fn completions_leave_out_the_internal_helper() -> anyhow::Result<()> {
    for shell in ["bash", "zsh", "fish"] {
        let text = stdout_ok(&["completions", shell])?;
        assert!(text.contains("learn"), "{shell}: no learn");
        assert!(text.contains("man"), "{shell}: no man");
        assert!(!text.contains("learn-exec"), "{shell}: offers learn-exec");
    }
    Ok(())
}
