//! Build script: records the commit the binary is built from, for
//! `hubbub_build_info{version,commit}` in /metrics and `GET /cluster`.
//!
//! `HUBBUB_COMMIT` is `git rev-parse --short HEAD`, or `unknown` when there is no git
//! or no repository (a source tarball, a container build without `.git`). No
//! dependency beyond the standard library.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=HUBBUB_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a
    // commit) and packed-refs (a gc). Only files that exist: cargo would rerun this
    // script on every build for a path that does not.
    let mut watched = vec!["HEAD".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    watched.push("packed-refs".to_owned());
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

/// The trimmed standard output of `git ARGS`, when git runs and succeeds.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}
