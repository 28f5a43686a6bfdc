// SPDX-License-Identifier: GPL-2.0-only
//! The VM-wide part of the in-kernel irqchip that KVM_CREATE_IRQCHIP creates beside
//! the per-vCPU LAPICs: the two 8259 PICs and the IOAPIC.
//!
//! Today they are register state only, kept for KVM_GET/SET_IRQCHIP with upstream's
//! reset values and chip ids; no pin drives them yet (no KVM_IRQ_LINE), so
//! KVM_CAP_IRQCHIP is not reported. The interrupt routing models come with the PIC,
//! IOAPIC and PIT work.

use kernel::prelude::*;

use crate::abi::uapi;

const CHIP_PIC_MASTER: u32 = uapi::KVM_IRQCHIP_PIC_MASTER;
const CHIP_PIC_SLAVE: u32 = uapi::KVM_IRQCHIP_PIC_SLAVE;
const CHIP_IOAPIC: u32 = uapi::KVM_IRQCHIP_IOAPIC;
/// IOAPIC_DEFAULT_BASE_ADDRESS.
const IOAPIC_BASE: u64 = 0xfec0_0000;
/// A masked redirection entry (bit 16).
const REDIR_MASKED: u64 = 1 << 16;

pub(crate) struct Irqchip {
    pic: [uapi::kvm_pic_state; 2],
    ioapic: uapi::kvm_ioapic_state,
}

impl Irqchip {
    /// The state after kvm_pic_init()/kvm_ioapic_reset().
    pub(crate) fn new() -> Self {
        let mut pic = [uapi::kvm_pic_state::default(); 2];
        // Which lines may be level-triggered (the ELCR masks of kvm_pic_init()).
        pic[0].elcr_mask = 0xf8;
        pic[1].elcr_mask = 0xde;
        let mut ioapic = uapi::kvm_ioapic_state {
            base_address: IOAPIC_BASE,
            ..Default::default()
        };
        for e in ioapic.redirtbl.iter_mut() {
            e.bits = REDIR_MASKED;
        }
        Irqchip { pic, ioapic }
    }

    /// KVM_GET_IRQCHIP (kvm_vm_ioctl_get_irqchip()): -EINVAL for an unknown chip.
    pub(crate) fn get(&self, c: &mut uapi::kvm_irqchip) -> Result {
        match c.chip_id {
            CHIP_PIC_MASTER => c.chip.pic = self.pic[0],
            CHIP_PIC_SLAVE => c.chip.pic = self.pic[1],
            CHIP_IOAPIC => c.chip.ioapic = self.ioapic,
            _ => return Err(EINVAL),
        }
        Ok(())
    }

    /// KVM_SET_IRQCHIP (kvm_vm_ioctl_set_irqchip()).
    pub(crate) fn set(&mut self, c: &uapi::kvm_irqchip) -> Result {
        // SAFETY: the union's variants are plain integers, so any bytes are a valid value of the one chip_id selects.
        unsafe {
            match c.chip_id {
                CHIP_PIC_MASTER => self.pic[0] = c.chip.pic,
                CHIP_PIC_SLAVE => self.pic[1] = c.chip.pic,
                CHIP_IOAPIC => self.ioapic = c.chip.ioapic,
                _ => return Err(EINVAL),
            }
        }
        Ok(())
    }
}
