//! What `tailrace --version` and `tailrace_build_info` say the extension was built from: the
//! commit (`unknown` outside a git checkout, as in the image's build stage) and the Rust
//! toolchain.
use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    println!("cargo:rustc-env=TAILRACE_RUSTC={version}");
    println!("cargo:rustc-env=TAILRACE_COMMIT={commit}{}", if dirty { "+changes" } else { "" });
    // A new commit (or checkout) rebuilds this crate's build info.
    for f in ["../../.git/HEAD", "../../.git/index"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
