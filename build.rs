//! Build script of the `moien` binary: records the git commit it was built from, for the
//! `moien_build_info` metric and `moien --version`.
//!
//! Order: `MOIEN_GIT_COMMIT` from the environment (packagers building from a tarball set it),
//! then `git rev-parse` when the source is a git checkout, else `unknown`. A clean clone without
//! `.git` (or without a `git` binary) still builds.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MOIEN_GIT_COMMIT");
    // It becomes a label value: a short, plain token whatever a packager passes.
    let commit = std::env::var("MOIEN_GIT_COMMIT")
        .ok()
        .map(|c| {
            c.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(40)
                .collect::<String>()
        })
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MOIEN_GIT_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    let git = Path::new(".git");
    if !git.exists() {
        return None;
    }
    // Rebuild when HEAD moves; only name files that exist, or cargo reruns this on every build.
    let head = git.join("HEAD");
    if head.exists() {
        println!("cargo:rerun-if-changed={}", head.display());
    }
    if let Ok(text) = std::fs::read_to_string(&head)
        && let Some(reference) = text.trim().strip_prefix("ref: ")
    {
        let r = git.join(reference);
        if r.exists() {
            println!("cargo:rerun-if-changed={}", r.display());
        }
    }
    let packed = git.join("packed-refs");
    if packed.exists() {
        println!("cargo:rerun-if-changed={}", packed.display());
    }
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let commit = String::from_utf8(out.stdout).ok()?;
    let commit = commit.trim();
    // Only hex goes into a label value.
    (!commit.is_empty() && commit.chars().all(|c| c.is_ascii_hexdigit())).then(|| commit.into())
}
