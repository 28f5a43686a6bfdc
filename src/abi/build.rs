//! Generates the uapi bindings from the pinned kernel source, exactly as the module
//! build does (scripts/gen-bindings.sh), so host tests see the ABI the modules see.
use std::{env, path::PathBuf, process::Command};

fn kernel_source() -> PathBuf {
    if let Ok(s) = env::var("KVM_RS_KSRC") {
        return PathBuf::from(s);
    }
    let cache = env::var("KVM_RS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env::var("HOME").unwrap_or_default()).join(".cache/kvm-rs"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("linux-source-"))
                && p.join(".kvm-rs-unpacked").exists()
        })
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no kernel source: run `make kernel` or set KVM_RS_KSRC (looked in {})", cache.display())
    })
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let ksrc = kernel_source();
    let status = Command::new("sh")
        .arg(root.join("scripts/gen-bindings.sh"))
        .arg("uapi")
        .arg(&ksrc)
        .arg(out.join("uapi.rs"))
        .status()
        .expect("running scripts/gen-bindings.sh");
    assert!(status.success(), "gen-bindings.sh uapi failed");
    println!("cargo:rustc-env=KVM_RS_GEN={}", out.display());
    println!("cargo:rerun-if-changed={}", root.join("scripts/gen-bindings.sh").display());
    println!("cargo:rerun-if-changed={}", ksrc.join("include/uapi/linux/kvm.h").display());
    println!("cargo:rerun-if-changed={}", ksrc.join("arch/x86/include/uapi/asm/kvm.h").display());
    println!("cargo:rerun-if-env-changed=KVM_RS_KSRC");
}
