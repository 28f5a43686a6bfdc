//! What the clients share: TAP-like reporting and the integer-argument ioctl.

use std::fmt;
use std::io::Error;
use std::os::fd::RawFd;

pub struct Report {
    pub passed: u32,
    pub failed: u32,
}

impl Report {
    pub fn check(&mut self, what: &str, ok: bool, detail: impl fmt::Display) {
        if ok {
            self.passed += 1;
            println!("ok - {what}");
        } else {
            self.failed += 1;
            println!("not ok - {what}: {detail}");
        }
    }

    /// Checks that `r` is the result `want` (a value, or `Err(errno)`).
    pub fn expect(&mut self, what: &str, r: Result<i32, i32>, want: Result<i32, i32>) {
        self.check(
            what,
            r == want,
            format!("got {}, want {}", show(r), show(want)),
        );
    }
}

pub fn show(r: Result<i32, i32>) -> String {
    match r {
        Ok(v) => format!("{v}"),
        Err(e) => format!("-{}", Error::from_raw_os_error(e)),
    }
}

pub fn errno() -> i32 {
    Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An ioctl whose argument is an integer (or a deliberately bad pointer such as NULL).
pub fn ioctl(fd: RawFd, cmd: u32, arg: u64) -> Result<i32, i32> {
    // SAFETY: the argument is an integer or an address the kernel validates (copy_*_user).
    let r = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}
