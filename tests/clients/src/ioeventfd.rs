//! KVM_IOEVENTFD: guest writes to a PIO port and an MMIO address signal eventfds
//! instead of exiting to userspace (a wildcard, a datamatch and a zero-length
//! registration), a write that does not match still exits, a deassigned one exits
//! again, and the ioctl's errnos.

use super::*;

const KVM_CHECK_EXTENSION: u32 = io(0x03);
const KVM_IOEVENTFD: u32 = iow::<uapi::kvm_ioeventfd>(0x79);
const DATAMATCH: u32 = 1 << uapi::kvm_ioeventfd_flag_nr_datamatch;
const PIO: u32 = 1 << uapi::kvm_ioeventfd_flag_nr_pio;
const DEASSIGN: u32 = 1 << uapi::kvm_ioeventfd_flag_nr_deassign;

const MMIO_ADDR: u64 = 0xd000_0000;

fn eventfd() -> Result<RawFd, String> {
    // SAFETY: creates a new fd; no memory is passed.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", Error::last_os_error()));
    }
    Ok(fd)
}

/// The eventfd's counter, reset to 0 (0 when it was not signalled).
fn take(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v`.
    let n = unsafe { libc::read(fd, ptr::from_mut(&mut v).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

fn ioeventfd(vm: RawFd, addr: u64, len: u32, fd: RawFd, flags: u32, dm: u64) -> Result<i32, i32> {
    let mut a = uapi::kvm_ioeventfd {
        datamatch: dm,
        addr,
        len,
        fd,
        flags,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_IOEVENTFD, &mut a)
}

pub(crate) fn ioeventfd_case(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let g = Guest::new(kvm)?;
    for cap in [
        uapi::KVM_CAP_IOEVENTFD,
        uapi::KVM_CAP_IOEVENTFD_NO_LENGTH,
        uapi::KVM_CAP_IOEVENTFD_ANY_LENGTH,
    ] {
        t.expect(
            &format!("ioeventfd: KVM_CHECK_EXTENSION({cap})"),
            ioctl(g.vm, KVM_CHECK_EXTENSION, cap.into()),
            Ok(1),
        );
    }
    let (wild, dm, mmio) = (eventfd()?, eventfd()?, eventfd()?);
    let vm = g.vm;
    sys("assign PIO 0x60/1", ioeventfd(vm, 0x60, 1, wild, PIO, 0))?;
    sys(
        "assign PIO 0x62/2 = 0x1234",
        ioeventfd(vm, 0x62, 2, dm, PIO | DATAMATCH, 0x1234),
    )?;
    sys(
        "assign MMIO any length",
        ioeventfd(vm, MMIO_ADDR, 0, mmio, 0, 0),
    )?;

    // The ioctl's checks, in upstream's order (kvm_assign_ioeventfd()).
    let cases: [(&str, Result<i32, i32>, i32); 9] = [
        (
            "length 3",
            ioeventfd(vm, 0x70, 3, wild, PIO, 0),
            libc::EINVAL,
        ),
        (
            "address wraps",
            ioeventfd(vm, u64::MAX - 1, 4, wild, 0, 0),
            libc::EINVAL,
        ),
        (
            "unknown flag",
            ioeventfd(vm, 0x70, 1, wild, PIO | 1 << 5, 0),
            libc::EINVAL,
        ),
        (
            "length 0 with datamatch",
            ioeventfd(vm, 0x70, 0, wild, PIO | DATAMATCH, 0),
            libc::EINVAL,
        ),
        ("not an fd", ioeventfd(vm, 0x70, 1, -1, PIO, 0), libc::EBADF),
        (
            "not an eventfd",
            ioeventfd(vm, 0x70, 1, vm, PIO, 0),
            libc::EINVAL,
        ),
        (
            "same port again",
            ioeventfd(vm, 0x60, 1, dm, PIO, 0),
            libc::EEXIST,
        ),
        (
            "a width at an any-length address",
            ioeventfd(vm, MMIO_ADDR, 4, dm, 0, 0),
            libc::EEXIST,
        ),
        (
            "deassign of what is not there",
            ioeventfd(vm, 0x60, 1, dm, PIO | DEASSIGN, 0),
            libc::ENOENT,
        ),
    ];
    for (what, r, want) in cases {
        t.expect(&format!("ioeventfd: {what}"), r, Err(want));
    }

    g.mem.write(
        0x1000,
        &[
            0xb0, 0x42, // mov al, 0x42
            0xe6, 0x60, // out 0x60, al: signals `wild`
            0x66, 0xb8, 0x34, 0x12, // mov ax, 0x1234
            0x66, 0xe7, 0x62, // out 0x62, ax: signals `dm`
            0x66, 0xb8, 0x35, 0x12, // mov ax, 0x1235
            0x66, 0xe7, 0x62, // out 0x62, ax: no match, to userspace
            0xc7, 0x05, 0x00, 0x00, 0x00, 0xd0, 0xef, 0xbe, 0xad,
            0xde, // mov dword [0xd0000000], 0xdeadbeef: signals `mmio`
            0xc6, 0x05, 0x00, 0x00, 0x00, 0xd0, 0x01, // mov byte [0xd0000000], 1: again
            0xe6, 0x60, // out 0x60, al: deassigned by then, to userspace
            0xf4, // hlt
        ],
    );
    g.flat32(0x1000)?;
    t.exit(
        "ioeventfd: a write that does not match exits",
        &g.step(),
        &out(0x62, 2, 1, &[0x35, 0x12]),
    );
    t.reg("ioeventfd: PIO wildcard signalled", take(wild), 1);
    t.reg("ioeventfd: PIO datamatch signalled", take(dm), 1);
    t.expect(
        "ioeventfd: deassign PIO 0x60",
        ioeventfd(vm, 0x60, 1, wild, PIO | DEASSIGN, 0),
        Ok(0),
    );
    t.expect(
        "ioeventfd: deassign twice",
        ioeventfd(vm, 0x60, 1, wild, PIO | DEASSIGN, 0),
        Err(libc::ENOENT),
    );
    t.exit(
        "ioeventfd: the deassigned port exits",
        &g.step(),
        &out(0x60, 1, 1, &[0x35]),
    );
    t.reg(
        "ioeventfd: MMIO of any width signalled twice",
        take(mmio),
        2,
    );
    t.reg("ioeventfd: nothing more on the wildcard", take(wild), 0);
    t.exit("ioeventfd: hlt", &g.step(), &Exit::Hlt);
    for fd in [wild, dm, mmio] {
        close(fd);
    }
    Ok(())
}
