//! kvm-smoke: the /dev/kvm API smoke test, run inside the test VM.
//!
//! Every assertion is upstream KVM's behaviour, so the same binary passes against the
//! in-tree modules (the reference) and ours; `--ours` adds the checks that only hold
//! for kvm-rs today (capabilities it does not report yet).
//!
//! Prints one `ok`/`not ok` line per check and `N passed, M failed`; exits 1 on failure.

use std::ffi::CString;
use std::fs;
use std::io::Error;
use std::os::fd::RawFd;

use kvm_abi::ioctl::{
    io, KVM_CHECK_EXTENSION, KVM_CREATE_VM, KVM_GET_API_VERSION, KVM_GET_VCPU_MMAP_SIZE,
};
use kvm_abi::uapi;

mod report;
use report::{ioctl, show, Report};

fn open(path: &str, flags: i32) -> Result<RawFd, i32> {
    let c = CString::new(path).map_err(|_| libc::EINVAL)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags) };
    if fd < 0 {
        Err(Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(fd)
    }
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this program owns.
    unsafe { libc::close(fd) };
}

fn vendor_module() -> Option<&'static str> {
    ["kvm_amd", "kvm_intel"]
        .into_iter()
        .find(|m| fs::metadata(format!("/sys/module/{m}")).is_ok())
}

fn refcnt(module: &str) -> i64 {
    fs::read_to_string(format!("/sys/module/{module}/refcnt"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1)
}

fn main() {
    let ours = std::env::args().any(|a| a == "--ours");
    let mut t = Report {
        passed: 0,
        failed: 0,
    };

    // The device node: misc major 10, minor 232 (KVM_MINOR), root-only by default.
    match fs::metadata("/dev/kvm") {
        Ok(m) => {
            use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
            let rdev = m.rdev();
            t.check(
                "/dev/kvm is a char device",
                m.file_type().is_char_device(),
                "not a char device",
            );
            t.check(
                "/dev/kvm is 10:232",
                libc::major(rdev) == 10 && libc::minor(rdev) == 232,
                format!("{}:{}", libc::major(rdev), libc::minor(rdev)),
            );
            t.check(
                "/dev/kvm mode 0600",
                m.permissions().mode() & 0o777 == 0o600,
                format!("{:o}", m.mode()),
            );
        }
        Err(e) => t.check("/dev/kvm exists", false, e),
    }

    let kvm = match open("/dev/kvm", libc::O_RDWR | libc::O_CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            t.check("open /dev/kvm", false, Error::from_raw_os_error(e));
            println!("{} passed, {} failed", t.passed, t.failed);
            std::process::exit(1);
        }
    };

    t.expect(
        "KVM_GET_API_VERSION",
        ioctl(kvm, KVM_GET_API_VERSION, 0),
        Ok(12),
    );
    t.expect(
        "KVM_GET_API_VERSION with arg",
        ioctl(kvm, KVM_GET_API_VERSION, 1),
        Err(libc::EINVAL),
    );
    t.expect(
        "KVM_GET_VCPU_MMAP_SIZE",
        ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0),
        Ok(3 * 4096),
    );
    t.expect(
        "KVM_GET_VCPU_MMAP_SIZE with arg",
        ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 1),
        Err(libc::EINVAL),
    );

    // Capabilities: unknown ones are 0 whatever the argument's width.
    t.expect(
        "CHECK_EXTENSION(unknown)",
        ioctl(kvm, KVM_CHECK_EXTENSION, 0xdead_beef),
        Ok(0),
    );
    t.expect(
        "CHECK_EXTENSION(-1)",
        ioctl(kvm, KVM_CHECK_EXTENSION, u64::MAX),
        Ok(0),
    );
    let cap_vm = uapi::KVM_CAP_CHECK_EXTENSION_VM as u64;
    t.expect(
        "CHECK_EXTENSION(CHECK_EXTENSION_VM)",
        ioctl(kvm, KVM_CHECK_EXTENSION, cap_vm),
        Ok(1),
    );
    t.expect(
        "CHECK_EXTENSION(CHECK_EXTENSION_VM | 1<<32) is not truncated",
        ioctl(kvm, KVM_CHECK_EXTENSION, 1 << 32 | cap_vm),
        Ok(0),
    );
    let types = ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_VM_TYPES as u64);
    t.check(
        "CHECK_EXTENSION(VM_TYPES) has KVM_X86_DEFAULT_VM",
        matches!(types, Ok(v) if v & 1 << uapi::KVM_X86_DEFAULT_VM != 0),
        show(types),
    );
    // KVM_X2APIC_API_VALID_FLAGS: 32-bit IDs, no broadcast quirk, the two
    // suppress-EOI-broadcast modes. Our kvm-intel has no vCPUs yet and so claims
    // no vCPU capability.
    let x2apic_api = if ours && vendor_module() == Some("kvm_intel") {
        0
    } else {
        kvm_abi::caps::X2APIC_API_VALID_FLAGS as i32
    };
    t.expect(
        "CHECK_EXTENSION(X2APIC_API) = KVM_X2APIC_API_VALID_FLAGS",
        ioctl(kvm, KVM_CHECK_EXTENSION, uapi::KVM_CAP_X2APIC_API as u64),
        Ok(x2apic_api),
    );
    if ours {
        // What kvm-rs cannot do yet must not be claimed: exits stay enabled.
        t.expect(
            "ours: CHECK_EXTENSION(X86_DISABLE_EXITS) = 0",
            ioctl(
                kvm,
                KVM_CHECK_EXTENSION,
                uapi::KVM_CAP_X86_DISABLE_EXITS as u64,
            ),
            Ok(0),
        );
    }

    // Unknown commands: /dev/kvm answers -EINVAL (x86's kvm_arch_dev_ioctl), also for a
    // foreign ioctl type.
    t.expect(
        "/dev/kvm unknown KVM ioctl",
        ioctl(kvm, io(0xfe), 0),
        Err(libc::EINVAL),
    );
    t.expect(
        "/dev/kvm TCGETS",
        ioctl(kvm, libc::TCGETS as u32, 0),
        Err(libc::EINVAL),
    );

    // VMs: invalid types are refused, valid ones give distinct close-on-exec fds.
    t.expect(
        "CREATE_VM(type 31)",
        ioctl(kvm, KVM_CREATE_VM, 31),
        Err(libc::EINVAL),
    );
    t.expect(
        "CREATE_VM(type 1<<40)",
        ioctl(kvm, KVM_CREATE_VM, 1 << 40),
        Err(libc::EINVAL),
    );
    let vendor = vendor_module();
    let base = vendor.map(refcnt).unwrap_or(-1);
    let vm1 = ioctl(kvm, KVM_CREATE_VM, 0);
    let vm2 = ioctl(kvm, KVM_CREATE_VM, 0);
    t.check(
        "CREATE_VM twice",
        matches!((vm1, vm2), (Ok(a), Ok(b)) if a >= 0 && b >= 0 && a != b),
        format!("{} {}", show(vm1), show(vm2)),
    );
    if let (Ok(vm1), Ok(vm2)) = (vm1, vm2) {
        let link = fs::read_link(format!("/proc/self/fd/{vm1}")).map(|p| p.display().to_string());
        t.check(
            "VM fd is anon_inode:kvm-vm",
            link.as_deref().ok() == Some("anon_inode:kvm-vm"),
            format!("{link:?}"),
        );
        // SAFETY: F_GETFD on an fd we own.
        let fdflags = unsafe { libc::fcntl(vm1, libc::F_GETFD) };
        t.check(
            "VM fd is O_CLOEXEC",
            fdflags >= 0 && fdflags & libc::FD_CLOEXEC != 0,
            fdflags,
        );
        // SAFETY: F_GETFL on an fd we own.
        let flflags = unsafe { libc::fcntl(vm1, libc::F_GETFL) };
        t.check(
            "VM fd is O_RDWR",
            flflags & libc::O_ACCMODE == libc::O_RDWR,
            flflags,
        );

        t.expect(
            "VM CHECK_EXTENSION(CHECK_EXTENSION_VM)",
            ioctl(vm1, KVM_CHECK_EXTENSION, cap_vm),
            Ok(1),
        );
        t.expect(
            "VM CHECK_EXTENSION(unknown)",
            ioctl(vm1, KVM_CHECK_EXTENSION, 0xdead_beef),
            Ok(0),
        );
        // Unknown commands on a VM fd: -ENOTTY (x86's kvm_arch_vm_ioctl).
        t.expect(
            "VM unknown KVM ioctl",
            ioctl(vm1, io(0xfe), 0),
            Err(libc::ENOTTY),
        );

        // A VM belongs to its creator's mm: a forked child gets -EIO.
        // SAFETY: the child only makes raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let r = ioctl(vm1, KVM_CHECK_EXTENSION, cap_vm);
            // SAFETY: terminating the forked child without running destructors.
            unsafe { libc::_exit(if r == Err(libc::EIO) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        t.check(
            "VM ioctl from a forked child is -EIO",
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            status,
        );

        if let Some(v) = vendor {
            t.check(
                &format!("open VM fds pin {v}"),
                refcnt(v) > base,
                format!("refcnt {} base {base}", refcnt(v)),
            );
        }
        close(vm1);
        close(vm2);
    }

    // Many VMs at once, then all released.
    let mut fds = Vec::new();
    for _ in 0..64 {
        match ioctl(kvm, KVM_CREATE_VM, 0) {
            Ok(fd) => fds.push(fd),
            Err(e) => {
                t.check("CREATE_VM x64", false, Error::from_raw_os_error(e));
                break;
            }
        }
    }
    t.check("CREATE_VM x64", fds.len() == 64, fds.len());
    fds.into_iter().for_each(close);
    if let Some(v) = vendor {
        t.check(
            &format!("closing VM fds unpins {v}"),
            refcnt(v) == base,
            format!("refcnt {} base {base}", refcnt(v)),
        );
    }
    close(kvm);

    println!("{} passed, {} failed", t.passed, t.failed);
    std::process::exit(if t.failed == 0 { 0 } else { 1 });
}
