//! Builds the guest's init (init/main.rs) into OUT_DIR/init with the compiler cargo runs
//! (`$RUSTC`): std only, glibc linked statically, so the initramfs needs no libraries.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init/main.rs");
    println!("cargo:rerun-if-changed=src/fnv.rs");
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = build() {
        eprintln!("error: building the Linux test guest's init failed: {e}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "--crate-name",
            "init",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "debuginfo=0",
            "-C",
            "strip=symbols",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(out.join("init"))
        .arg("init/main.rs")
        .output()
        .map_err(|e| format!("running {}: {e}", rustc.to_string_lossy()))?;
    if !output.status.success() {
        return Err(format!(
            "rustc failed ({}): the init links glibc statically (Debian: libc6-dev, and the \
             x86_64-unknown-linux-gnu target):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}
