//! `warden-reaper CGROUP`: started by the broker with a pipe on stdin;
//! when the pipe ends (the broker is gone), kills every process in CGROUP.
//! See `warden_supervisor::Reaper`.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(cgroup), None) = (args.next(), args.next()) else {
        eprintln!("usage: warden-reaper CGROUP (started by wardend, with its pipe on stdin)");
        return std::process::ExitCode::from(2);
    };
    match warden_supervisor::reaper_main(std::path::Path::new(&cgroup)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-reaper: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
