//! The learn workflow as an operator runs it: the README's lines on a
//! program that prints, a `#!` script profiled then verified, suggestions
//! that never grant a refusal, and reports that show only the command's
//! own denials, each once, with clean paths. A real broker, `wardenctl
//! learn` as a test user. Need root and BPF.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use warden_testkit::{bin_path, command_as, config_text, BrokerProcess, TestDir, TestUser};

use crate::learn::{denials, learn_as, report_json, LEARN_CONFIG};
use crate::{stderr, stdout, users};

fn start(test: &str) -> (TestUser, TestDir, BrokerProcess) {
    let (a, _, _) = users(test);
    let dir = TestDir::new(test).unwrap_or_else(|e| panic!("{e:#}"));
    let broker = BrokerProcess::start(&dir, &config_text(&dir, LEARN_CONFIG))
        .unwrap_or_else(|e| panic!("{e:#}"));
    (a, dir, broker)
}

/// A directory of `user`'s (0755) inside `dir`, as a user's project
/// directory would be.
fn work_dir(dir: &TestDir, user: &TestUser, name: &str) -> anyhow::Result<PathBuf> {
    let w = dir.path().join(name);
    std::fs::create_dir_all(&w)?;
    std::os::unix::fs::chown(&w, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755))?;
    Ok(w)
}

/// Writes `text` as `user`'s file `path` with `mode`.
fn user_file(user: &TestUser, path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text)?;
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The `sh` block of README.md's "Learning mode" section, one command a
/// line.
fn readme_learn_lines() -> anyhow::Result<Vec<String>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))?;
    let section = readme
        .split("\n## Learning mode\n")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("README.md has no \"## Learning mode\" section"))?;
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .ok_or_else(|| anyhow::anyhow!("the Learning mode section has no sh block"))?;
    Ok(block.lines().map(str::to_owned).collect())
}

const MYAPP_SAYS: &str = "myapp: hello\nmyapp: the data is 42\n";

#[test]
#[ignore = "needs root"]
fn the_readme_lines_profile_and_verify_a_program_that_prints() -> anyhow::Result<()> {
    let (a, dir, broker) = start("learn-readme");
    let lines = readme_learn_lines()?;
    // The three steps, as the README shows them: report, profile, verify.
    anyhow::ensure!(lines.len() == 3, "README learn block changed: {lines:#?}");
    anyhow::ensure!(
        lines[1].contains("--format landlock-json") && lines[2].contains("--verify myapp.json"),
        "README learn block changed: {lines:#?}"
    );
    let work = work_dir(&dir, &a, "project")?;
    // The program: a `#!` script that prints and reads a file.
    user_file(&a, &work.join("data.txt"), "42\n", 0o644)?;
    user_file(
        &a,
        &work.join("myapp"),
        "#!/bin/sh\necho 'myapp: hello'\necho \"myapp: the data is $(cat ./data.txt)\"\n",
        0o755,
    )?;
    let ctl = warden_testkit::shared_copy(&bin_path("wardenctl"))?;
    let ctl_dir = ctl
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no directory"))?;
    let run_line = |line: &str| -> anyhow::Result<Output> {
        Ok(command_as(&a, Path::new("/bin/sh"))
            .arg("-c")
            .arg(format!("cd {} && {line}", work.display()))
            .env("PATH", format!("{}:/usr/bin:/bin", ctl_dir.display()))
            .env("WARDEN_SOCKET", broker.socket())
            .env_remove("LD_LIBRARY_PATH")
            .output()?)
    };
    for (i, line) in lines.iter().enumerate() {
        let out = run_line(line)?;
        // Each step runs the program, which keeps its stdout to itself.
        assert_eq!(out.status.code(), Some(0), "{line}\n{}", stderr(&out));
        assert_eq!(stdout(&out), MYAPP_SAYS, "{line}\nstderr: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("denied operation"), "{line}: no report: {err}");
        if i == 1 {
            // The profile is a Landlock profile, and names the script.
            let text = std::fs::read_to_string(work.join("myapp.json"))?;
            let p: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("myapp.json is not JSON ({e}): {text}"))?;
            let myapp = work.join("myapp").display().to_string();
            assert!(
                p["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["path"] == myapp.as_str()
                        && r["access"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == "execute")))),
                "{p:#}"
            );
        }
        if i == 2 {
            // Sandboxed, it was refused nothing.
            assert!(err.contains("learn: 0 denied operations"), "{err}");
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_profiled_sh_script_runs_under_verify_with_only_the_intended_denial() -> anyhow::Result<()> {
    let (a, dir, broker) = start("learn-script");
    let work = work_dir(&dir, &a, "s")?;
    let data = work.join("input.txt");
    user_file(&a, &data, "script input\n", 0o644)?;
    let script = work.join("job.sh");
    // Reads its input, and tries /etc/shadow (refused by file permissions:
    // the intended denial, which no profile takes away or grants).
    user_file(
        &a,
        &script,
        &format!(
            "#!/bin/sh\necho job-start\ncat {}\ncat /etc/shadow 2>/dev/null\nexit 0\n",
            data.display()
        ),
        0o755,
    )?;
    let profile = work.join("job.json");
    let script_s = script.display().to_string();
    let out = learn_as(
        &a,
        broker.socket(),
        &["--format", "landlock-json", "--output"],
    )
    .arg(&profile)
    .args(["--", &script_s])
    .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&profile)?)?;
    let out = learn_as(&a, broker.socket(), &["--json", "--verify"])
        .arg(&profile)
        .args(["--", &script_s])
        .env("PATH", "/usr/bin:/bin")
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the script did not run under its own profile: {}\n{p:#}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "job-start\nscript input\n");
    let report = report_json(&out)?;
    assert_eq!(
        denials(&report),
        vec![("openat".into(), "EACCES".into(), "/etc/shadow".into())],
        "{report:#}\n{p:#}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn suggestions_grant_what_was_written_and_only_list_a_refused_write() -> anyhow::Result<()> {
    let (a, dir, broker) = start("learn-grant");
    let work = work_dir(&dir, &a, "w")?;
    let outdir = work.join("out");
    std::fs::create_dir_all(&outdir)?;
    std::os::unix::fs::chown(&outdir, Some(a.uid), Some(a.gid))?;
    let forbidden = "/etc/wdn-learn-refused-write";
    let _ = std::fs::remove_file(forbidden);
    let prog = format!(
        "echo ok > {}/result.txt; echo no 2>/dev/null > {forbidden}; true",
        outdir.display()
    );
    for (format, file) in [("systemd", "unit.conf"), ("landlock-json", "ll.json")] {
        let dest = work.join(file);
        let out = learn_as(&a, broker.socket(), &["--format", format, "--output"])
            .arg(&dest)
            .args(["--", "/bin/sh", "-c", &prog])
            .output()?;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // The refusal did happen, and the report says so.
        assert!(stderr(&out).contains(forbidden), "{}", stderr(&out));
        let text = std::fs::read_to_string(&dest)?;
        if format == "systemd" {
            let lines: Vec<&str> = text.lines().collect();
            let out_s = outdir.display().to_string();
            assert!(
                lines.contains(&format!("ReadWritePaths=-{out_s}").as_str()),
                "{text}"
            );
            for l in lines.iter().filter(|l| !l.starts_with('#')) {
                assert!(
                    !l.contains("/etc"),
                    "a refused write became a grant: {l}\n{text}"
                );
            }
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with('#') && l.contains(forbidden)),
                "the refused write is not listed: {text}"
            );
        } else {
            let p: Value = serde_json::from_str(&text)?;
            for r in p["rules"].as_array().into_iter().flatten() {
                let path = r["path"].as_str().unwrap_or("");
                let writes = r["access"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x != "read_file" && x != "read_dir" && x != "execute")
                });
                assert!(
                    !(path == "/etc" || path.starts_with("/etc/")) || !writes,
                    "a refused write became a grant: {r}\n{p:#}"
                );
            }
            assert!(
                p["rules"]
                    .as_array()
                    .is_some_and(
                        |r| r.iter().any(|r| r["path"] == outdir.display().to_string()
                            && r["access"]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|x| x == "make_reg")))
                    ),
                "{p:#}"
            );
            assert!(
                p["refused"].as_array().is_some_and(|r| r
                    .iter()
                    .any(|l| l.as_str().is_some_and(|l| l.contains(forbidden)))),
                "{p:#}"
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn wardenctls_own_path_search_is_not_reported_as_the_commands_denials() -> anyhow::Result<()> {
    let (a, dir, broker) = start("learn-path");
    // Before the real cat in PATH: a directory A may not search (with a
    // cat inside), and a cat A may not execute.
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked)?;
    std::fs::write(locked.join("cat"), "#!/bin/sh\n")?;
    std::fs::set_permissions(locked.join("cat"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700))?;
    let noexec = dir.path().join("noexec");
    std::fs::create_dir_all(&noexec)?;
    std::fs::write(noexec.join("cat"), "#!/bin/sh\n")?;
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(noexec.join("cat"), std::fs::Permissions::from_mode(0o644))?;
    let work = work_dir(&dir, &a, "p")?;
    user_file(&a, &work.join("f"), "found the real cat\n", 0o644)?;
    let path = format!("{}:{}:/usr/bin:/bin", locked.display(), noexec.display());
    let out = learn_as(&a, broker.socket(), &["--json", "--", "cat"])
        .arg(work.join("f"))
        .env("PATH", &path)
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "found the real cat\n");
    let report = report_json(&out)?;
    assert_eq!(denials(&report), vec![], "{report:#}");
    // The plain report says so too, and names no probe.
    let out = learn_as(&a, broker.socket(), &["--", "cat"])
        .arg(work.join("f"))
        .env("PATH", &path)
        .output()?;
    let err = stderr(&out);
    assert!(err.contains("learn: 0 denied operations"), "{err}");
    assert!(!err.contains("execve"), "{err}");
    // A command that is nowhere in PATH is refused like a shell does.
    let out = learn_as(&a, broker.socket(), &["--", "wdn-no-such-command"])
        .env("PATH", &path)
        .output()?;
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not found in PATH"),
        "{}",
        stderr(&out)
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_dotdot_path_is_reported_normalized_and_once() -> anyhow::Result<()> {
    let (a, _dir, broker) = start("learn-dotdot");
    // The same file three ways, by a child cat and then by the shell's
    // own process after it became cat (its comm changed at the exec).
    let out = learn_as(&a, broker.socket(), &["--json", "--", "/bin/sh", "-c"])
        .arg("cat /etc/../etc/shadow 2>/dev/null; cd /etc && exec cat ./../etc//shadow 2>/dev/null")
        // The shell's own PATH search is the program's: keep it short.
        .env("PATH", "/usr/bin:/bin")
        .output()?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = report_json(&out)?;
    assert_eq!(
        denials(&report),
        vec![
            ("openat".into(), "EACCES".into(), "/etc/shadow".into()),
            ("openat".into(), "EACCES".into(), "/etc/shadow".into()),
        ],
        "{report:#}"
    );
    let groups = report["denials"].as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 1, "one denial, two groups: {report:#}");
    assert_eq!(groups[0]["target"], "/etc/shadow");
    assert_eq!(groups[0]["count"], 2);
    assert_eq!(groups[0]["comm"], "cat");
    // The plain report lists it on one line.
    let out = learn_as(&a, broker.socket(), &["--", "/bin/sh", "-c"])
        .arg("cat /etc/../etc/shadow 2>/dev/null; cd /etc && exec cat ./../etc//shadow 2>/dev/null")
        // The shell's own PATH search is the program's: keep it short.
        .env("PATH", "/usr/bin:/bin")
        .output()?;
    let err = stderr(&out);
    assert_eq!(
        err.lines().filter(|l| l.contains("/etc/shadow")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains(".."), "{err}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn learn_errors_go_to_stderr_even_as_json() -> anyhow::Result<()> {
    let (a, _dir, broker) = start("learn-err");
    // Root's process: refused by the broker.
    let out = learn_as(
        &a,
        broker.socket(),
        &["--json", "--pid", "1", "--duration", "1s"],
    )
    .output()?;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "learn wrote on stdout");
    let err = stderr(&out);
    let obj: Value = err
        .lines()
        .find(|l| l.starts_with('{'))
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default();
    assert_eq!(obj["error"]["code"], "denied", "{err}");
    assert_eq!(obj["error"]["exit"], 1, "{err}");
    assert!(err.contains("denied"), "{err}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn an_output_symlink_is_refused_before_the_command_runs() -> anyhow::Result<()> {
    let (a, dir, broker) = start("learn-outlink");
    let work = work_dir(&dir, &a, "o")?;
    let victim = work.join("victim");
    user_file(&a, &victim, "precious\n", 0o644)?;
    let link = work.join("profile.json");
    std::os::unix::fs::symlink(&victim, &link)?;
    std::os::unix::fs::lchown(&link, Some(a.uid), Some(a.gid))?;
    let marker = work.join("ran");
    let out = learn_as(
        &a,
        broker.socket(),
        &["--format", "landlock-json", "--output"],
    )
    .arg(&link)
    .args(["--", "/usr/bin/touch"])
    .arg(&marker)
    .output()?;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(
        !marker.exists(),
        "the command ran although --output was refused"
    );
    assert_eq!(std::fs::read_to_string(&victim)?, "precious\n");
    // The same run to a plain file writes the profile, readable by all.
    let file = work.join("real.json");
    let out = learn_as(
        &a,
        broker.socket(),
        &["--format", "landlock-json", "--output"],
    )
    .arg(&file)
    .args(["--", "/usr/bin/touch"])
    .arg(&marker)
    .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(marker.exists());
    let meta = std::fs::metadata(&file)?;
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), a.uid);
    assert_eq!(meta.permissions().mode() & 0o777 & !0o022, 0o644 & !0o022);
    let _: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    Ok(())
}
