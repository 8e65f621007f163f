//! With the `capture` feature: compiles the BPF program
//! (src/bpf/learn.bpf.c) with clang into `$OUT_DIR/learn.bpf.o`, which
//! the crate embeds. Needs clang (Debian: `clang`). `vmlinux.h` is
//! committed, generated once with
//! `bpftool btf dump file /sys/kernel/btf/vmlinux format c`.

fn main() {
    println!("cargo:rerun-if-changed=src/bpf/learn.bpf.c");
    println!("cargo:rerun-if-changed=src/bpf/learn.h");
    #[cfg(feature = "capture")]
    compile();
}

#[cfg(feature = "capture")]
fn compile() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default())
        .join("learn.bpf.o");
    let result = libbpf_cargo::SkeletonBuilder::new()
        .source("src/bpf/learn.bpf.c")
        .obj(&out)
        .clang_args(["-Wall", "-Werror", "-Isrc/bpf"])
        .build();
    if let Err(e) = result {
        // A build script reports by failing; say what to install.
        eprintln!("building the learning-mode BPF program failed: {e:#}");
        eprintln!("it needs clang: apt-get install clang libelf-dev zlib1g-dev pkg-config");
        std::process::exit(1);
    }
}
