//! guest_memfd: KVM_CREATE_GUEST_MEMFD's and KVM_MEM_GUEST_MEMFD slots' errnos,
//! then a guest running on guest_memfd memory that userspace mmaps (MMAP |
//! INIT_SHARED): both see each other's writes, a punched hole reads back as zeroes
//! in both, and once the file is gone the guest's access fails KVM_RUN with
//! -EFAULT and a KVM_EXIT_MEMORY_FAULT for the page (kvm_mmu_faultin_pfn_gmem()).

use super::*;

const KVM_CHECK_EXTENSION: u32 = io(0x03);
const KVM_CREATE_GUEST_MEMFD: u32 = iowr::<uapi::kvm_create_guest_memfd>(0xd4);
const KVM_SET_USER_MEMORY_REGION2: u32 = iow::<uapi::kvm_userspace_memory_region2>(0x49);
const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;
const KVM_MEM_READONLY: u32 = 1 << 1;
const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// Where the guest_memfd slot sits (above the 2 MiB slot 0), and its size.
const GMEM_GPA: u64 = 0x40_0000;
const GMEM_SIZE: u64 = 2 * PAGE;

fn create(vm: RawFd, size: u64, flags: u64) -> Result<i32, i32> {
    let mut a = uapi::kvm_create_guest_memfd {
        size,
        flags,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_CREATE_GUEST_MEMFD, &mut a)
}

/// KVM_SET_USER_MEMORY_REGION2 of a guest_memfd slot (no user address).
fn slot(
    vm: RawFd,
    id: u32,
    flags: u32,
    gpa: u64,
    size: u64,
    fd: i32,
    off: u64,
) -> Result<i32, i32> {
    let mut r = uapi::kvm_userspace_memory_region2 {
        slot: id,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: 0,
        guest_memfd_offset: off,
        guest_memfd: fd as u32,
        ..Default::default()
    };
    ioctl_ref(vm, KVM_SET_USER_MEMORY_REGION2, &mut r)
}

/// A shared mapping of `len` bytes of `fd`.
fn map(fd: RawFd, len: usize) -> Result<*mut u8, i32> {
    // SAFETY: a fresh shared mapping of a file this program owns.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(p.cast())
    }
}

fn punch_hole(fd: RawFd, off: i64, len: i64) -> Result<i32, i32> {
    let mode = libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE;
    // SAFETY: fallocate on an fd this program owns.
    if unsafe { libc::fallocate(fd, mode, off, len) } < 0 {
        Err(errno())
    } else {
        Ok(0)
    }
}

pub(crate) fn gmem(t: &mut Report, kvm: RawFd) -> Result<(), String> {
    let flags = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    for (what, cap, want) in [
        ("KVM_CAP_GUEST_MEMFD", uapi::KVM_CAP_GUEST_MEMFD, 1),
        (
            "KVM_CAP_GUEST_MEMFD_FLAGS",
            uapi::KVM_CAP_GUEST_MEMFD_FLAGS,
            flags as i32,
        ),
    ] {
        let r = ioctl(kvm, KVM_CHECK_EXTENSION, cap.into());
        t.expect(&format!("gmem: {what} on /dev/kvm"), r, Ok(want));
    }
    let g = Guest::new(kvm)?;
    let r = ioctl(
        g.vm,
        KVM_CHECK_EXTENSION,
        uapi::KVM_CAP_GUEST_MEMFD_FLAGS.into(),
    );
    t.expect(
        "gmem: KVM_CAP_GUEST_MEMFD_FLAGS on a VM",
        r,
        Ok(flags as i32),
    );
    for (what, size, fl) in [
        ("an unknown flag", PAGE, 1 << 2),
        ("size 0", 0, 0),
        ("a size not page-aligned", PAGE + 1, 0),
        ("a negative size (loff_t)", 1 << 63, 0),
    ] {
        let r = create(g.vm, size, fl);
        t.expect(&format!("gmem: create with {what}"), r, Err(libc::EINVAL));
    }
    let fd = sys("KVM_CREATE_GUEST_MEMFD", create(g.vm, GMEM_SIZE, flags))?;
    let other = Guest::new(kvm)?;
    let foreign = sys("KVM_CREATE_GUEST_MEMFD", create(other.vm, GMEM_SIZE, flags))?;
    let gm = KVM_MEM_GUEST_MEMFD;
    let cases: [(&str, u32, u64, i32, u64, i32); 7] = [
        (
            "with dirty logging",
            gm | KVM_MEM_LOG_DIRTY_PAGES,
            GMEM_SIZE,
            fd,
            0,
            libc::EINVAL,
        ),
        (
            "read-only",
            gm | KVM_MEM_READONLY,
            GMEM_SIZE,
            fd,
            0,
            libc::EINVAL,
        ),
        (
            "on a file that is not a guest_memfd",
            gm,
            GMEM_SIZE,
            kvm,
            0,
            libc::EINVAL,
        ),
        ("on a closed fd", gm, GMEM_SIZE, 0x7fff_0000, 0, libc::EBADF),
        ("at an unaligned offset", gm, PAGE, fd, 0x800, libc::EINVAL),
        ("past the file's end", gm, PAGE, fd, GMEM_SIZE, libc::EINVAL),
        (
            "on another VM's guest_memfd",
            gm,
            GMEM_SIZE,
            foreign,
            0,
            libc::EINVAL,
        ),
    ];
    for (what, fl, size, f, off, want) in cases {
        let r = slot(g.vm, 1, fl, GMEM_GPA, size, f, off);
        t.expect(&format!("gmem: a slot {what}"), r, Err(want));
    }
    close(foreign);
    drop(other);
    let r = slot(g.vm, 1, gm, GMEM_GPA, GMEM_SIZE, fd, 0);
    t.expect("gmem: bind slot 1 to the file", r, Ok(0));
    let r = slot(g.vm, 2, gm, 0x20_0000 + GMEM_GPA, PAGE, fd, PAGE);
    t.expect(
        "gmem: a second slot over the same file pages",
        r,
        Err(libc::EEXIST),
    );
    let r = slot(g.vm, 1, gm, GMEM_GPA, GMEM_SIZE, fd, 0);
    t.expect("gmem: changing a guest_memfd slot", r, Err(libc::EINVAL));
    let r = slot(g.vm, 1, gm, GMEM_GPA, 0, fd, 0);
    t.expect("gmem: delete slot 1", r, Ok(0));
    let r = slot(g.vm, 1, gm, GMEM_GPA, GMEM_SIZE, fd, 0);
    t.expect(
        "gmem: bind it again (the binding went with the slot)",
        r,
        Ok(0),
    );

    let m = match map(fd, GMEM_SIZE as usize) {
        Ok(m) => m,
        Err(e) => {
            close(fd);
            return Err(format!("mmap guest_memfd: {}", show(Err(e))));
        }
    };
    // SAFETY: both offsets are inside the mapping; the vCPU is not running.
    let peek = |off: usize| unsafe { ptr::read_volatile(m.add(off)) };
    // SAFETY: as above.
    let poke = |off: usize, v: u8| unsafe { ptr::write_volatile(m.add(off), v) };
    poke(0, 0xa5);
    poke(PAGE as usize, 0x3c);
    g.mem.write(
        0x1000,
        &[
            0xa0, 0x00, 0x00, // mov al, [0]      (ds = the guest_memfd slot)
            0xe6, 0x10, // out 0x10, al
            0xc6, 0x06, 0x00, 0x00, 0x5a, // mov byte [0], 0x5a
            0xa0, 0x00, 0x10, // mov al, [0x1000]
            0xe6, 0x11, // out 0x11, al
            0xf4, // hlt
            0xa0, 0x00, 0x00, // mov al, [0]      (after the punched hole)
            0xe6, 0x12, // out 0x12, al
            0xf4, // hlt
            0xa0, 0x00, 0x00, // mov al, [0]      (after the file is gone)
            0xf4, // hlt
        ],
    );
    g.real_mode(0x1000, 0)?;
    let mut s = g.sregs()?;
    s.ds.base = GMEM_GPA;
    g.set_sregs(s)?;
    t.exit(
        "gmem: the guest reads userspace's write",
        &g.step(),
        &out(0x10, 1, 1, &[0xa5]),
    );
    t.exit(
        "gmem: and the second page",
        &g.step(),
        &out(0x11, 1, 1, &[0x3c]),
    );
    t.check(
        "gmem: userspace reads the guest's write",
        peek(0) == 0x5a,
        peek(0),
    );
    t.exit("gmem: hlt", &g.step(), &Exit::Hlt);
    t.expect(
        "gmem: punch a hole in page 0",
        punch_hole(fd, 0, PAGE as i64),
        Ok(0),
    );
    t.check("gmem: userspace reads zeroes there", peek(0) == 0, peek(0));
    t.check(
        "gmem: the other page kept its data",
        peek(PAGE as usize) == 0x3c,
        peek(PAGE as usize),
    );
    t.exit(
        "gmem: the guest reads zeroes there",
        &g.step(),
        &out(0x12, 1, 1, &[0]),
    );
    t.exit("gmem: hlt again", &g.step(), &Exit::Hlt);
    // SAFETY: unmapping the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(m.cast(), GMEM_SIZE as usize) };
    close(fd);
    t.exit(
        "gmem: the guest's access once the file is gone",
        &g.step(),
        &Exit::Failed(libc::EFAULT),
    );
    let r = g.state();
    // SAFETY: the memory_fault member, plain integers (checked only with its reason).
    let mf = unsafe { r.__bindgen_anon_1.memory_fault };
    t.check(
        "gmem: with KVM_EXIT_MEMORY_FAULT for the page",
        r.exit_reason == uapi::KVM_EXIT_MEMORY_FAULT
            && (mf.flags, mf.gpa, mf.size) == (0, GMEM_GPA, PAGE),
        format!(
            "exit_reason {} flags {:#x} gpa {:#x} size {:#x}",
            r.exit_reason, mf.flags, mf.gpa, mf.size
        ),
    );
    // The file pins its VM: closing the VM first leaves the file usable, and the
    // VM goes with the file (the leak loop runs this under kmemleak).
    let h = Guest::new(kvm)?;
    let fd = sys("KVM_CREATE_GUEST_MEMFD", create(h.vm, GMEM_SIZE, flags))?;
    let r = slot(h.vm, 1, gm, GMEM_GPA, GMEM_SIZE, fd, 0);
    t.expect("gmem: bind a slot of a VM about to be closed", r, Ok(0));
    drop(h);
    t.expect(
        "gmem: punch a hole after its VM fd is closed",
        punch_hole(fd, 0, PAGE as i64),
        Ok(0),
    );
    close(fd);
    Ok(())
}
