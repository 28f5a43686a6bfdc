//! Generates the uapi bindings from the pinned kernel source, exactly as the module
//! build does (scripts/gen-bindings.sh), so host tests see the ABI the modules see.
use std::{env, path::PathBuf, process::Command};

fn kernel_source() -> Result<PathBuf, String> {
    if let Ok(s) = env::var("KVM_RS_KSRC") {
        return Ok(PathBuf::from(s));
    }
    let cache = env::var("KVM_RS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cache/kvm-rs")
        });
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-"))
                && p.join(".kvm-rs-unpacked").exists()
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        format!(
            "no kernel source: run `make kernel` or set KVM_RS_KSRC (looked in {})",
            cache.display()
        )
    })
}

fn main() -> Result<(), String> {
    let dir = env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?;
    let root = PathBuf::from(dir).join("../..");
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let ksrc = kernel_source()?;
    let status = Command::new("sh")
        .arg(root.join("scripts/gen-bindings.sh"))
        .arg("uapi")
        .arg(&ksrc)
        .arg(out.join("uapi.rs"))
        .status()
        .map_err(|e| format!("running scripts/gen-bindings.sh: {e}"))?;
    if !status.success() {
        return Err("scripts/gen-bindings.sh uapi failed".into());
    }
    println!("cargo:rustc-env=KVM_RS_GEN={}", out.display());
    let gen = root.join("scripts/gen-bindings.sh");
    println!("cargo:rerun-if-changed={}", gen.display());
    for h in [
        "include/uapi/linux/kvm.h",
        "arch/x86/include/uapi/asm/kvm.h",
    ] {
        println!("cargo:rerun-if-changed={}", ksrc.join(h).display());
    }
    println!("cargo:rerun-if-env-changed=KVM_RS_KSRC");
    Ok(())
}
