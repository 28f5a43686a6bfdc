//! The MSR filter (upstream KVM_X86_SET_MSR_FILTER in x86.c): which guest RDMSR
//! and WRMSR accesses KVM may handle itself; the others fail with the
//! "filtered" reason, which KVM_CAP_X86_USER_SPACE_MSR can turn into exits to
//! userspace. Pure rules; the kernel side copies the bitmaps in.

/// `struct kvm_msr_filter_range.flags`: the range applies to reads, writes.
pub const FILTER_READ: u32 = 1 << 0;
pub const FILTER_WRITE: u32 = 1 << 1;
/// KVM_MSR_FILTER_RANGE_VALID_MASK.
pub const RANGE_VALID_MASK: u32 = FILTER_READ | FILTER_WRITE;
/// `struct kvm_msr_filter.flags`: accesses no range covers are denied.
pub const DEFAULT_DENY: u32 = 1 << 0;
/// KVM_MSR_FILTER_VALID_MASK.
pub const FILTER_VALID_MASK: u32 = DEFAULT_DENY;
/// KVM_MSR_FILTER_MAX_RANGES, KVM_MSR_FILTER_MAX_BITMAP_SIZE (bytes).
pub const MAX_RANGES: usize = 16;
pub const MAX_BITMAP_SIZE: usize = 0x600;
/// The x2APIC MSRs, never filtered.
const X2APIC_FIRST: u32 = 0x800;
const X2APIC_LAST: u32 = 0x8ff;

/// Why an MSR access failed, as KVM_CAP_X86_USER_SPACE_MSR names the reasons
/// (KVM_MSR_EXIT_REASON_*): a value the MSR refuses, an MSR KVM does not know,
/// or the filter.
pub const EXIT_REASON_INVAL: u32 = 1 << 0;
pub const EXIT_REASON_UNKNOWN: u32 = 1 << 1;
pub const EXIT_REASON_FILTER: u32 = 1 << 2;
/// KVM_MSR_EXIT_REASON_VALID_MASK.
pub const EXIT_REASON_VALID_MASK: u32 =
    EXIT_REASON_INVAL | EXIT_REASON_UNKNOWN | EXIT_REASON_FILTER;

/// A range or filter upstream refuses (-EINVAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Invalid;

/// One range as userspace gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub flags: u32,
    pub base: u32,
    pub nmsrs: u32,
}

/// kvm_add_msr_filter()'s checks: None for an empty range (skipped), the
/// bitmap's size in bytes (whole longs, as upstream copies it) for a valid one,
/// Err for flags or a size upstream refuses (-EINVAL).
pub fn range_bitmap_size(r: &Range) -> Result<Option<usize>, Invalid> {
    if r.nmsrs == 0 {
        return Ok(None);
    }
    if r.flags & !RANGE_VALID_MASK != 0 || r.flags == 0 {
        return Err(Invalid);
    }
    let longs = (r.nmsrs as usize).div_ceil(64);
    let size = longs * 8;
    if size > MAX_BITMAP_SIZE {
        return Err(Invalid);
    }
    Ok(Some(size))
}

/// kvm_vm_ioctl_set_msr_filter()'s checks of the filter flags: known flags
/// only, and a default-deny filter must have a range.
pub fn filter_valid(flags: u32, any_range: bool) -> bool {
    flags & !FILTER_VALID_MASK == 0 && (any_range || flags & DEFAULT_DENY == 0)
}

/// kvm_msr_allowed(): whether an access of `kind` (FILTER_READ or FILTER_WRITE)
/// to `index` passes a filter with `flags` and `ranges` (each with its bitmap,
/// bit n for MSR base + n, set = allowed). The first range that covers it
/// decides; x2APIC MSRs always pass.
pub fn msr_allowed<'a>(
    flags: u32,
    ranges: impl Iterator<Item = (Range, &'a [u8])>,
    index: u32,
    kind: u32,
) -> bool {
    if (X2APIC_FIRST..=X2APIC_LAST).contains(&index) {
        return true;
    }
    for (r, bitmap) in ranges {
        // Upstream's end wraps as a u32: such a range covers nothing.
        let end = r.base.wrapping_add(r.nmsrs);
        if index >= r.base && index < end && r.flags & kind != 0 {
            let bit = (index - r.base) as usize;
            return bitmap
                .get(bit / 8)
                .is_some_and(|b| b & (1 << (bit % 8)) != 0);
        }
    }
    flags & DEFAULT_DENY == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        let r = |flags, nmsrs| Range {
            flags,
            base: 0,
            nmsrs,
        };
        assert_eq!(range_bitmap_size(&r(0, 0)), Ok(None));
        assert_eq!(range_bitmap_size(&r(FILTER_READ, 1)), Ok(Some(8)));
        assert_eq!(range_bitmap_size(&r(FILTER_WRITE, 65)), Ok(Some(16)));
        assert_eq!(range_bitmap_size(&r(0, 1)), Err(Invalid));
        assert_eq!(range_bitmap_size(&r(4, 1)), Err(Invalid));
        let max = (MAX_BITMAP_SIZE * 8) as u32;
        assert_eq!(
            range_bitmap_size(&r(FILTER_READ, max)),
            Ok(Some(MAX_BITMAP_SIZE))
        );
        assert_eq!(range_bitmap_size(&r(FILTER_READ, max + 1)), Err(Invalid));
        assert!(filter_valid(0, false));
        assert!(!filter_valid(DEFAULT_DENY, false));
        assert!(filter_valid(DEFAULT_DENY, true));
        assert!(!filter_valid(2, true));
    }

    #[test]
    fn first_covering_range_decides() {
        let deny_all = [0u8; 8];
        let allow_all = [0xffu8; 8];
        let read = Range {
            flags: FILTER_READ,
            base: 0x10,
            nmsrs: 4,
        };
        let both = Range {
            flags: FILTER_READ | FILTER_WRITE,
            base: 0x10,
            nmsrs: 8,
        };
        let ranges = || [(read, &deny_all[..]), (both, &allow_all[..])].into_iter();
        assert!(!msr_allowed(0, ranges(), 0x11, FILTER_READ));
        assert!(msr_allowed(0, ranges(), 0x11, FILTER_WRITE));
        assert!(msr_allowed(DEFAULT_DENY, ranges(), 0x15, FILTER_READ));
        // Outside every range: the default.
        assert!(msr_allowed(0, ranges(), 0x20, FILTER_READ));
        assert!(!msr_allowed(DEFAULT_DENY, ranges(), 0x20, FILTER_READ));
        // x2APIC MSRs are never filtered.
        assert!(msr_allowed(DEFAULT_DENY, ranges(), 0x830, FILTER_WRITE));
        // A range whose end wraps covers nothing.
        let wrap = Range {
            flags: FILTER_READ,
            base: u32::MAX,
            nmsrs: 2,
        };
        assert!(msr_allowed(
            0,
            [(wrap, &deny_all[..])].into_iter(),
            u32::MAX,
            FILTER_READ
        ));
        // Bit n of the bitmap is MSR base + n.
        let one = [0b10u8];
        let r = Range {
            flags: FILTER_WRITE,
            base: 0x100,
            nmsrs: 2,
        };
        assert!(msr_allowed(
            DEFAULT_DENY,
            [(r, &one[..])].into_iter(),
            0x101,
            FILTER_WRITE
        ));
        assert!(!msr_allowed(
            0,
            [(r, &one[..])].into_iter(),
            0x100,
            FILTER_WRITE
        ));
    }
}
