//! x86 instruction decoder and mini emulator: the pure logic behind MMIO and
//! string-I/O emulation (upstream arch/x86/kvm/emulate.c and the emulator_*
//! callbacks of x86.c).
//!
//! About 1,250 lines of code plus the host tests, in one file as upstream's
//! emulate.c: the decoder and the operand, ALU and string helpers all work on one
//! `Insn` and rely on what the decoder guarantees about it.
//!
//! kvm.ko fetches up to [`MAX_INSN_LEN`] bytes at CS.base + RIP, calls [`decode`],
//! turns the operand into a linear address with [`effective_address`] and
//! [`linear_address`], translates it with the walker (mmu/paging.rs), and completes the access with
//! [`store_value`], [`complete_load`], [`alu`] or the string helpers once the device
//! model has the data. Only forms with a memory operand (and string I/O) are decoded:
//! register-only forms never reach the emulator from an MMIO fault.
//!
//! One file of ~1,000 lines of code (plus its tests), as upstream's emulate.c is
//! one: the decoder tables and the operations they name belong together. The guest
//! page walker, the other half of emulation, is mmu/paging.rs.

use super::msr_index::EFER_LMA;
/// Architectural maximum instruction length; longer is #GP(0) (__do_insn_fetch_bytes).
use super::processor_flags::{
    X86_CR0_PE, X86_EFLAGS_AF, X86_EFLAGS_CF, X86_EFLAGS_DF, X86_EFLAGS_OF, X86_EFLAGS_PF,
    X86_EFLAGS_SF, X86_EFLAGS_VM, X86_EFLAGS_ZF,
};
pub const MAX_INSN_LEN: usize = 15;

/// Segment register numbers (upstream VCPU_SREG_*).
pub const ES: u8 = 0;
pub const CS: u8 = 1;
pub const SS: u8 = 2;
pub const DS: u8 = 3;
pub const FS: u8 = 4;
pub const GS: u8 = 5;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RDX: u8 = 2;
const RSP: u8 = 4;
const RBP: u8 = 5;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// The flags the ALU instructions define (EFLAGS_MASK in emulate.c).
pub const ARITH_FLAGS: u64 =
    X86_EFLAGS_CF | X86_EFLAGS_PF | X86_EFLAGS_AF | X86_EFLAGS_ZF | X86_EFLAGS_SF | X86_EFLAGS_OF;

/// Page-fault error code bits (PFERR_*_MASK).
pub const PFERR_PRESENT: u32 = 1 << 0;
pub const PFERR_WRITE: u32 = 1 << 1;
pub const PFERR_USER: u32 = 1 << 2;
pub const PFERR_RSVD: u32 = 1 << 3;
pub const PFERR_FETCH: u32 = 1 << 4;

/// CPU mode for decoding, upstream enum x86emul_mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Real,
    Vm86,
    Prot16,
    Prot32,
    Prot64,
}

/// The emulation mode from the vCPU state, as init_emulate_ctxt computes it.
pub fn mode(cr0: u64, rflags: u64, efer: u64, cs_l: bool, cs_db: bool) -> Mode {
    if cr0 & X86_CR0_PE == 0 {
        Mode::Real
    } else if rflags & X86_EFLAGS_VM != 0 {
        Mode::Vm86
    } else if cs_l && efer & EFER_LMA != 0 {
        Mode::Prot64
    } else if cs_db {
        Mode::Prot32
    } else {
        Mode::Prot16
    }
}

/// A register or immediate operand of an instruction whose other operand is memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    /// GPR in hardware numbering; `high_byte` selects AH, CH, DH, BH (byte operands
    /// 4..7 without a REX prefix).
    Reg { reg: u8, high_byte: bool },
    /// Immediate, already sign-extended as the CPU does and masked to the operand size
    /// (for BT/BTS/BTR/BTC the raw imm8 bit offset).
    Imm(u64),
    /// No second operand (INC, DEC, NOT, NEG).
    None,
}

/// The operation of an ALU instruction on memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AluKind {
    Add,
    Or,
    Adc,
    Sbb,
    And,
    Sub,
    Xor,
    Cmp,
    Test,
    Inc,
    Dec,
    Not,
    Neg,
    Bt,
    Bts,
    Btr,
    Btc,
}

/// What a decoded instruction does with memory; enough for MMIO exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Load `Insn::op_size` bytes from memory into register `dst`, written with
    /// `dst_size` (MOV r,m; MOVZX; MOVSX; MOVSXD; MOV A,moffs).
    Load {
        dst: u8,
        high_byte: bool,
        dst_size: u8,
        sign_extend: bool,
    },
    /// Store `src` to memory (MOV m,r; MOV m,imm; MOV moffs,A; MOVNTI).
    Store { src: Operand },
    /// ALU with memory: `mem_is_dst` when memory is the destination (else the register
    /// `other` is); `writes_back` when the result is stored (false for CMP, TEST, BT).
    Alu {
        kind: AluKind,
        other: Operand,
        mem_is_dst: bool,
        writes_back: bool,
    },
    /// XCHG r,m (86/87): read memory into `reg`, write the old `reg` to memory. Always
    /// locked, with or without the prefix.
    Xchg { reg: u8, high_byte: bool },
    /// MOVS: DS:rSI (overridable) to ES:rDI.
    Movs,
    /// STOS: rAX to ES:rDI.
    Stos,
    /// LODS: DS:rSI (overridable) to rAX.
    Lods,
    /// INS: port DX to ES:rDI.
    Ins,
    /// OUTS: DS:rSI (overridable) to port DX.
    Outs,
    /// CMPS: compare DS:rSI (overridable) with ES:rDI.
    Cmps,
    /// SCAS: compare rAX with ES:rDI.
    Scas,
    /// MOV to (`to_dr`) or from debug register `dr` (0-15, REX.R included) from or
    /// to general register `gpr`; `Insn::op_size` is 8 in 64-bit mode, else 4. No
    /// memory operand: the CPU takes the ModRM form as a register one whatever
    /// its mod bits.
    MovDr { dr: u8, gpr: u8, to_dr: bool },
}

/// REP prefixes; F3 is plain REP for the non-comparing string instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rep {
    /// F3: REP / REPE / REPZ.
    Repe,
    /// F2: REPNE / REPNZ (plain REP for MOVS, STOS, LODS, INS, OUTS).
    Repne,
}

/// A ModRM memory operand (or a moffs absolute address: no base, no index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    pub base: Option<u8>,
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// Sign-extended displacement (the full moffs for A0-A3).
    pub disp: u64,
    /// disp is relative to the next instruction's RIP (64-bit mode, mod 00 r/m 101).
    pub rip_relative: bool,
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Total length including prefixes.
    pub len: u8,
    pub op: Op,
    /// Memory access size in bytes (1, 2, 4, 8).
    pub op_size: u8,
    /// Address size in bytes (2, 4, 8).
    pub addr_size: u8,
    /// Segment of the address [`effective_address`] returns: the override or the
    /// default (DS; SS for rBP/rSP bases). String destinations are always ES, so this is
    /// ES for STOS, INS, SCAS and the source segment for MOVS, LODS, OUTS, CMPS.
    pub seg: u8,
    /// Only set for string instructions (ignored by the CPU elsewhere).
    pub rep: Option<Rep>,
    /// The ModRM or moffs operand; None for string instructions.
    pub modrm_mem: Option<MemOperand>,
    /// F0 prefix present (already validated: #UD forms are rejected by decode).
    pub lock: bool,
    pub mode: Mode,
    /// Opcode, 0x0fXX for two-byte opcodes (for diagnostics).
    pub opcode: u16,
}

impl Insn {
    pub fn is_string(&self) -> bool {
        matches!(
            self.op,
            Op::Movs | Op::Stos | Op::Lods | Op::Ins | Op::Outs | Op::Cmps | Op::Scas
        )
    }

    /// The instruction reads the memory operand (for MOVS and CMPS, the source).
    pub fn reads_memory(&self) -> bool {
        !matches!(
            self.op,
            Op::Store { .. } | Op::Stos | Op::Ins | Op::MovDr { .. }
        )
    }

    /// The instruction writes the memory operand (for MOVS, the destination).
    pub fn writes_memory(&self) -> bool {
        match self.op {
            Op::Store { .. } | Op::Xchg { .. } | Op::Movs | Op::Stos | Op::Ins => true,
            Op::Alu {
                mem_is_dst,
                writes_back,
                ..
            } => mem_is_dst && writes_back,
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Valid but not emulated: report an emulation failure as upstream does.
    Unsupported,
    /// The bytes end before the instruction does: fetch more and decode again.
    Truncated,
    /// #UD (e.g. LOCK on a non-lockable form, a reserved group encoding).
    Invalid,
    /// Longer than 15 bytes: #GP(0).
    TooLong,
}

const REX_W: u8 = 8;
const REX_R: u8 = 4;
const REX_X: u8 = 2;
const REX_B: u8 = 1;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_INSN_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Little-endian value of `n` (1..=8) bytes, zero-extended.
    fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..n.min(8) {
            v |= u64::from(self.byte()?) << (8 * u32::from(i));
        }
        Ok(v)
    }

    /// An immediate of the operand size: imm8/16/32, 32 sign-extended for 64-bit
    /// operands (OpImm in decode_operand).
    fn imm(&mut self, size: u8) -> Result<u64, DecodeError> {
        let n = size.min(4);
        Ok(sign_extend(self.le(n)?, n) & size_mask(size))
    }
}

#[derive(Default)]
struct Prefixes {
    op16: bool,
    ad: bool,
    seg: Option<u8>,
    lock: bool,
    rep: Option<Rep>,
    rex: u8,
}

struct Ctx {
    mode: Mode,
    rex: u8,
    op_size: u8,
    addr_size: u8,
    lock: bool,
}

struct ModRm {
    /// The reg field with REX.R.
    reg: u8,
    /// The reg field alone: the /digit of group opcodes.
    digit: u8,
    /// None for mod == 11 (register operand).
    mem: Option<(MemOperand, u8)>,
}

enum MemKind {
    /// ModRM or moffs operand with its default segment.
    Operand(MemOperand, u8),
    StringSrc,
    StringDst,
    /// Registers only (MOV DR).
    None,
}

struct Body {
    opcode: u16,
    op: Op,
    size: u8,
    mem: MemKind,
}

impl Ctx {
    /// Register operand of `size`: byte registers 4..7 are AH..BH without REX
    /// (decode_register with highbyte_regs).
    fn reg_operand(&self, reg: u8, size: u8) -> Operand {
        if size == 1 && self.rex == 0 && (4..8).contains(&reg) {
            Operand::Reg {
                reg: reg - 4,
                high_byte: true,
            }
        } else {
            Operand::Reg {
                reg,
                high_byte: false,
            }
        }
    }

    /// The memory operand, or why a register form is not emulated: with LOCK it is
    /// #UD (x86_decode_insn: lock_prefix with dst.type != OP_MEM).
    fn need_mem(&self, m: &ModRm) -> Result<MemKind, DecodeError> {
        match m.mem {
            Some((mem, seg)) => Ok(MemKind::Operand(mem, seg)),
            None if self.lock => Err(DecodeError::Invalid),
            None => Err(DecodeError::Unsupported),
        }
    }
}

/// ModRM (+SIB, displacement), as decode_modrm.
fn modrm(cur: &mut Cursor<'_>, c: &Ctx) -> Result<ModRm, DecodeError> {
    let m = cur.byte()?;
    let md = m >> 6;
    let digit = (m >> 3) & 7;
    let reg = digit | if c.rex & REX_R != 0 { 8 } else { 0 };
    let rm_low = m & 7;
    let rex_b = if c.rex & REX_B != 0 { 8 } else { 0 };
    if md == 3 {
        return Ok(ModRm {
            reg,
            digit,
            mem: None,
        });
    }
    let mut mem = MemOperand {
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        rip_relative: false,
    };
    let mut seg = DS;
    if c.addr_size == 2 {
        // 16-bit forms: BX+SI, BX+DI, BP+SI, BP+DI, SI, DI, BP (disp16 with mod 00), BX.
        let (base, index) = match rm_low {
            0 => (Some(3), Some(RSI)),
            1 => (Some(3), Some(RDI)),
            2 => (Some(RBP), Some(RSI)),
            3 => (Some(RBP), Some(RDI)),
            4 => (Some(RSI), None),
            5 => (Some(RDI), None),
            6 if md == 0 => (None, None),
            6 => (Some(RBP), None),
            _ => (Some(3), None),
        };
        mem.base = base;
        mem.index = index;
        if base == Some(RBP) {
            seg = SS;
        }
        mem.disp = match md {
            0 if rm_low == 6 => sign_extend(cur.le(2)?, 2),
            1 => sign_extend(cur.le(1)?, 1),
            2 => sign_extend(cur.le(2)?, 2),
            _ => 0,
        };
        return Ok(ModRm {
            reg,
            digit,
            mem: Some((mem, seg)),
        });
    }
    if rm_low == 4 {
        let sib = cur.byte()?;
        let index = ((sib >> 3) & 7) | if c.rex & REX_X != 0 { 8 } else { 0 };
        let base_low = sib & 7;
        mem.scale = 1 << (sib >> 6);
        // Index 100 without REX.X means none; R12 (with REX.X) is a real index.
        mem.index = if index == 4 { None } else { Some(index) };
        if base_low == 5 && md == 0 {
            mem.disp = sign_extend(cur.le(4)?, 4);
        } else {
            let base = base_low | rex_b;
            mem.base = Some(base);
            seg = default_seg(base);
        }
    } else if rm_low == 5 && md == 0 {
        mem.disp = sign_extend(cur.le(4)?, 4);
        mem.rip_relative = c.mode == Mode::Prot64;
    } else {
        let base = rm_low | rex_b;
        mem.base = Some(base);
        seg = default_seg(base);
    }
    let disp = match md {
        1 => sign_extend(cur.le(1)?, 1),
        2 => sign_extend(cur.le(4)?, 4),
        _ => 0,
    };
    mem.disp = mem.disp.wrapping_add(disp);
    Ok(ModRm {
        reg,
        digit,
        mem: Some((mem, seg)),
    })
}

/// adjust_modrm_seg: only RSP and RBP themselves (not R12/R13) default to SS.
fn default_seg(base: u8) -> u8 {
    if base == RSP || base == RBP {
        SS
    } else {
        DS
    }
}

/// The ALU operation of opcode row / group-1 digit `n` (add, or, adc, sbb, and, sub,
/// xor, cmp).
fn group1_kind(n: u8) -> AluKind {
    match n & 7 {
        0 => AluKind::Add,
        1 => AluKind::Or,
        2 => AluKind::Adc,
        3 => AluKind::Sbb,
        4 => AluKind::And,
        5 => AluKind::Sub,
        6 => AluKind::Xor,
        _ => AluKind::Cmp,
    }
}

fn alu_body(opcode: u16, kind: AluKind, other: Operand, size: u8, mem: MemKind) -> Body {
    Body {
        opcode,
        op: Op::Alu {
            kind,
            other,
            mem_is_dst: true,
            writes_back: !matches!(kind, AluKind::Cmp | AluKind::Test | AluKind::Bt),
        },
        size,
        mem,
    }
}

/// The one-byte opcodes with a memory operand (subset of opcode_table).
fn decode_opcode(cur: &mut Cursor<'_>, b: u8, c: &Ctx) -> Result<Body, DecodeError> {
    let opcode = u16::from(b);
    // Byte/full pairs: even opcodes are the byte form (I2bv).
    let size = if b & 1 == 0 { 1 } else { c.op_size };
    let string = |op: Op, size: u8, mem: MemKind| Body {
        opcode,
        op,
        size,
        mem,
    };
    match b {
        // I6ALU: r/m,r and r,r/m forms of add, or, adc, sbb, and, sub, xor, cmp.
        0x00..=0x3f if b & 7 < 4 => {
            let kind = group1_kind(b >> 3);
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let mem_is_dst = b & 2 == 0;
            Ok(Body {
                opcode,
                op: Op::Alu {
                    kind,
                    other: c.reg_operand(m.reg, size),
                    mem_is_dst,
                    writes_back: kind != AluKind::Cmp,
                },
                size,
                mem,
            })
        }
        // MOVSXD (mode_dual_63); ARPL outside 64-bit mode is not emulated.
        0x63 if c.mode == Mode::Prot64 => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            // The SDM's r16,m16 / r32,m32 / r64,m32 forms (upstream always reads 4).
            let src = c.op_size.min(4);
            Ok(Body {
                opcode,
                op: Op::Load {
                    dst: m.reg,
                    high_byte: false,
                    dst_size: c.op_size,
                    sign_extend: c.op_size == 8,
                },
                size: src,
                mem,
            })
        }
        // 82 is an alias of 80, #UD in 64-bit mode (No64).
        0x82 if c.mode == Mode::Prot64 => Err(DecodeError::Invalid),
        0x80..=0x83 => {
            let size = if b == 0x81 || b == 0x83 { c.op_size } else { 1 };
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let imm = if b == 0x81 {
                cur.imm(size)?
            } else {
                sign_extend(cur.le(1)?, 1) & size_mask(size)
            };
            Ok(alu_body(
                opcode,
                group1_kind(m.digit),
                Operand::Imm(imm),
                size,
                mem,
            ))
        }
        0x84 | 0x85 => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let other = c.reg_operand(m.reg, size);
            Ok(alu_body(opcode, AluKind::Test, other, size, mem))
        }
        0x86 | 0x87 => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let Operand::Reg { reg, high_byte } = c.reg_operand(m.reg, size) else {
                return Err(DecodeError::Unsupported);
            };
            Ok(Body {
                opcode,
                op: Op::Xchg { reg, high_byte },
                size,
                mem,
            })
        }
        0x88..=0x8b => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let reg = c.reg_operand(m.reg, size);
            let op = match (b & 2 == 0, reg) {
                (true, _) => Op::Store { src: reg },
                (false, Operand::Reg { reg, high_byte }) => Op::Load {
                    dst: reg,
                    high_byte,
                    dst_size: size,
                    sign_extend: false,
                },
                (false, _) => return Err(DecodeError::Unsupported),
            };
            Ok(Body {
                opcode,
                op,
                size,
                mem,
            })
        }
        // MOV AL/rAX <-> moffs (decode_abs): the offset is addr_size bytes.
        0xa0..=0xa3 => {
            let moffs = cur.le(c.addr_size)?;
            let mem = MemOperand {
                base: None,
                index: None,
                scale: 1,
                disp: moffs,
                rip_relative: false,
            };
            let op = if b & 2 == 0 {
                Op::Load {
                    dst: RAX,
                    high_byte: false,
                    dst_size: size,
                    sign_extend: false,
                }
            } else {
                Op::Store {
                    src: Operand::Reg {
                        reg: RAX,
                        high_byte: false,
                    },
                }
            };
            Ok(Body {
                opcode,
                op,
                size,
                mem: MemKind::Operand(mem, DS),
            })
        }
        0xa4 | 0xa5 => Ok(string(Op::Movs, size, MemKind::StringSrc)),
        0xa6 | 0xa7 => Ok(string(Op::Cmps, size, MemKind::StringSrc)),
        0xaa | 0xab => Ok(string(Op::Stos, size, MemKind::StringDst)),
        0xac | 0xad => Ok(string(Op::Lods, size, MemKind::StringSrc)),
        0xae | 0xaf => Ok(string(Op::Scas, size, MemKind::StringDst)),
        // INS/OUTS move at most a doubleword: REX.W is ignored.
        0x6c | 0x6d => Ok(string(Op::Ins, size.min(4), MemKind::StringDst)),
        0x6e | 0x6f => Ok(string(Op::Outs, size.min(4), MemKind::StringSrc)),
        // group11: MOV r/m, imm (/0 only).
        0xc6 | 0xc7 => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            if m.digit != 0 {
                return Err(DecodeError::Invalid);
            }
            let imm = cur.imm(size)?;
            Ok(Body {
                opcode,
                op: Op::Store {
                    src: Operand::Imm(imm),
                },
                size,
                mem,
            })
        }
        // group3: TEST imm (/0, /1 alias), NOT, NEG; MUL/IMUL/DIV/IDIV are not emulated.
        0xf6 | 0xf7 => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            match m.digit {
                0 | 1 => {
                    let imm = cur.imm(size)?;
                    Ok(alu_body(
                        opcode,
                        AluKind::Test,
                        Operand::Imm(imm),
                        size,
                        mem,
                    ))
                }
                2 => Ok(alu_body(opcode, AluKind::Not, Operand::None, size, mem)),
                3 => Ok(alu_body(opcode, AluKind::Neg, Operand::None, size, mem)),
                _ => Err(DecodeError::Unsupported),
            }
        }
        // group4 (FE) / group5 (FF): INC, DEC; FE /2../7 are #UD, FF's CALL/JMP/PUSH
        // are not emulated.
        0xfe | 0xff => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            match m.digit {
                0 => Ok(alu_body(opcode, AluKind::Inc, Operand::None, size, mem)),
                1 => Ok(alu_body(opcode, AluKind::Dec, Operand::None, size, mem)),
                _ if b == 0xfe => Err(DecodeError::Invalid),
                _ => Err(DecodeError::Unsupported),
            }
        }
        0x0f => decode_0f(cur, c),
        _ => Err(DecodeError::Unsupported),
    }
}

/// The two-byte opcodes with a memory operand (subset of twobyte_table).
fn decode_0f(cur: &mut Cursor<'_>, c: &Ctx) -> Result<Body, DecodeError> {
    let b = cur.byte()?;
    let opcode = 0x0f00 | u16::from(b);
    match b {
        // MOVZX / MOVSX from m8 / m16.
        0xb6 | 0xb7 | 0xbe | 0xbf => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            Ok(Body {
                opcode,
                op: Op::Load {
                    dst: m.reg,
                    high_byte: false,
                    dst_size: c.op_size,
                    sign_extend: b >= 0xbe,
                },
                size: if b & 1 == 0 { 1 } else { 2 },
                mem,
            })
        }
        // BT/BTS/BTR/BTC m, r: the register offset may address outside the operand
        // (fetch_bit_operand; see effective_address).
        0xa3 | 0xab | 0xb3 | 0xbb => {
            let kind = match b {
                0xa3 => AluKind::Bt,
                0xab => AluKind::Bts,
                0xb3 => AluKind::Btr,
                _ => AluKind::Btc,
            };
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let other = c.reg_operand(m.reg, c.op_size);
            Ok(alu_body(opcode, kind, other, c.op_size, mem))
        }
        // group8: BT/BTS/BTR/BTC m, imm8 (/4../7; /0../3 are #UD).
        0xba => {
            let m = modrm(cur, c)?;
            let mem = c.need_mem(&m)?;
            let kind = match m.digit {
                4 => AluKind::Bt,
                5 => AluKind::Bts,
                6 => AluKind::Btr,
                7 => AluKind::Btc,
                _ => return Err(DecodeError::Invalid),
            };
            let imm = cur.le(1)?;
            Ok(alu_body(opcode, kind, Operand::Imm(imm), c.op_size, mem))
        }
        // MOV r, DRn (0F 21) and MOV DRn, r (0F 23): ModRM's reg is the debug
        // register, r/m the general one, whatever mod says; 64-bit operands in
        // 64-bit mode, else 32-bit (prefixes do not change it).
        0x21 | 0x23 => {
            let m = cur.byte()?;
            let dr = ((m >> 3) & 7) | if c.rex & REX_R != 0 { 8 } else { 0 };
            let gpr = (m & 7) | if c.rex & REX_B != 0 { 8 } else { 0 };
            Ok(Body {
                opcode,
                op: Op::MovDr {
                    dr,
                    gpr,
                    to_dr: b == 0x23,
                },
                size: if c.mode == Mode::Prot64 { 8 } else { 4 },
                mem: MemKind::None,
            })
        }
        // MOVNTI m32/m64, r (instr_dual_0f_c3): memory only, no 16-bit form.
        0xc3 => {
            let m = modrm(cur, c)?;
            let Some((mem, seg)) = m.mem else {
                return Err(DecodeError::Invalid);
            };
            if c.op_size == 2 {
                return Err(DecodeError::Invalid);
            }
            Ok(Body {
                opcode,
                op: Op::Store {
                    src: c.reg_operand(m.reg, c.op_size),
                },
                size: c.op_size,
                mem: MemKind::Operand(mem, seg),
            })
        }
        _ => Err(DecodeError::Unsupported),
    }
}

/// The length of the INT3 (CC), INT n (CD ib) or INTO (CE; not in 64-bit mode) at
/// the start of `bytes`, prefixes included: the instruction a #BP or #OF that is
/// injected again must return past (upstream decodes it with EMULTYPE_SKIP).
/// None for anything else.
pub fn soft_exception_len(bytes: &[u8], mode: Mode) -> Option<u8> {
    let mut pos = 0usize;
    loop {
        let b = *bytes.get(pos)?;
        let prefix = matches!(
            b,
            0x66 | 0x67 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0xf0 | 0xf2 | 0xf3
        ) || mode == Mode::Prot64 && (0x40..=0x4f).contains(&b);
        if !prefix {
            let len = match b {
                0xcc => pos + 1,
                0xce if mode != Mode::Prot64 => pos + 1,
                0xcd if bytes.len() > pos + 1 => pos + 2,
                _ => return None,
            };
            return u8::try_from(len).ok().filter(|&l| l <= 15);
        }
        pos += 1;
    }
}

/// Decodes one instruction with the mode's default sizes (CS.D = 0 in real mode).
pub fn decode(bytes: &[u8], mode: Mode) -> Result<Insn, DecodeError> {
    decode_with_cs_d(bytes, mode, false)
}

/// Decodes one instruction. `cs_d` is CS.D, which x86_decode_insn also honours in real
/// and VM86 mode ("big real" code segments default to 32-bit sizes); ignored elsewhere.
pub fn decode_with_cs_d(bytes: &[u8], mode: Mode, cs_d: bool) -> Result<Insn, DecodeError> {
    let (def_op, def_ad): (u8, u8) = match mode {
        Mode::Real | Mode::Vm86 if cs_d => (4, 4),
        Mode::Real | Mode::Vm86 | Mode::Prot16 => (2, 2),
        Mode::Prot32 => (4, 4),
        Mode::Prot64 => (4, 8),
    };
    let mut cur = Cursor { bytes, pos: 0 };
    let mut p = Prefixes::default();
    // Legacy prefixes and REX, as x86_decode_insn: the last segment override and the
    // last F2/F3 win; REX counts only when it is the last prefix.
    let b = loop {
        let b = cur.byte()?;
        match b {
            0x66 => p.op16 = true,
            0x67 => p.ad = true,
            0x26 | 0x2e | 0x36 | 0x3e => p.seg = Some((b >> 3) & 3),
            0x64 => p.seg = Some(FS),
            0x65 => p.seg = Some(GS),
            0xf0 => p.lock = true,
            0xf2 => p.rep = Some(Rep::Repne),
            0xf3 => p.rep = Some(Rep::Repe),
            0x40..=0x4f if mode == Mode::Prot64 => {
                p.rex = b;
                continue;
            }
            _ => break b,
        }
        // Any legacy prefix after a REX prefix nullifies its effect.
        p.rex = 0;
    };
    // REX.W wins over 66.
    let op_size = if p.rex & REX_W != 0 {
        8
    } else if p.op16 {
        def_op ^ 6
    } else {
        def_op
    };
    let addr_size = match (p.ad, mode) {
        (false, _) => def_ad,
        (true, Mode::Prot64) => 4,
        (true, _) => def_ad ^ 6,
    };
    let c = Ctx {
        mode,
        rex: p.rex,
        op_size,
        addr_size,
        lock: p.lock,
    };
    let body = decode_opcode(&mut cur, b, &c)?;
    let (seg, modrm_mem, string) = match body.mem {
        MemKind::Operand(m, def) => (p.seg.unwrap_or(def), Some(m), false),
        MemKind::StringSrc => (p.seg.unwrap_or(DS), None, true),
        MemKind::StringDst => (ES, None, true),
        MemKind::None => (DS, None, false),
    };
    // LOCK is #UD unless the instruction is a lockable read-modify-write of memory
    // (x86_decode_insn: Lock flag and dst.type == OP_MEM).
    let lockable = matches!(
        body.op,
        Op::Alu {
            mem_is_dst: true,
            writes_back: true,
            ..
        } | Op::Xchg { .. }
    );
    if p.lock && !lockable {
        return Err(DecodeError::Invalid);
    }
    Ok(Insn {
        len: u8::try_from(cur.pos).unwrap_or(u8::MAX),
        op: body.op,
        op_size: body.size,
        addr_size,
        seg,
        rep: if string { p.rep } else { None },
        modrm_mem,
        lock: p.lock,
        mode,
        opcode: body.opcode,
    })
}

/// All-ones of `size` bytes (1, 2, 4; anything else is 8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
pub fn sign_extend(v: u64, size: u8) -> u64 {
    let shift = 64 - 8 * u32::from(size.clamp(1, 8));
    (((v << shift) as i64) >> shift) as u64
}

fn sign_bit(size: u8) -> u64 {
    1 << (8 * u32::from(size.clamp(1, 8)) - 1)
}

fn gpr_get(gpr: &[u64; 16], reg: u8) -> u64 {
    gpr.get(usize::from(reg)).copied().unwrap_or(0)
}

/// Reads `size` bytes of GPR `reg` (AH..BH with `high_byte`).
pub fn read_gpr(gpr: &[u64; 16], reg: u8, high_byte: bool, size: u8) -> u64 {
    let v = gpr_get(gpr, reg);
    if high_byte {
        (v >> 8) & 0xff
    } else {
        v & size_mask(size)
    }
}

/// Writes `value` (size 1, 2, 4, 8) into GPR `reg` with the x86 width rules: 8- and
/// 16-bit writes merge, 32-bit writes zero-extend (assign_register / write_register_operand).
pub fn write_gpr(gpr: &mut [u64; 16], reg: u8, high_byte: bool, size: u8, value: u64) {
    let Some(r) = gpr.get_mut(usize::from(reg)) else {
        return;
    };
    *r = match (size, high_byte) {
        (1, true) => (*r & !0xff00) | ((value & 0xff) << 8),
        (1, false) => (*r & !0xff) | (value & 0xff),
        (2, _) => (*r & !0xffff) | (value & 0xffff),
        (4, _) => value & 0xffff_ffff,
        _ => value,
    };
}

fn operand_value(gpr: &[u64; 16], o: Operand, size: u8) -> u64 {
    match o {
        Operand::Reg { reg, high_byte } => read_gpr(gpr, reg, high_byte, size),
        Operand::Imm(v) => v,
        Operand::None => 0,
    }
}

/// Effective address (offset within the segment, truncated to addr_size) of the memory
/// operand. `next_rip` is the RIP after this instruction, for RIP-relative forms. For
/// string instructions: rSI for MOVS, LODS, OUTS, CMPS (the source), rDI for STOS, INS,
/// SCAS.
pub fn effective_address(insn: &Insn, gpr: &[u64; 16], next_rip: u64) -> u64 {
    let mask = size_mask(insn.addr_size);
    match insn.op {
        Op::Movs | Op::Lods | Op::Outs | Op::Cmps => return gpr_get(gpr, RSI) & mask,
        Op::Stos | Op::Ins | Op::Scas => return gpr_get(gpr, RDI) & mask,
        _ => {}
    }
    let Some(m) = insn.modrm_mem else {
        return 0;
    };
    let mut ea = m.disp;
    if let Some(b) = m.base {
        ea = ea.wrapping_add(gpr_get(gpr, b));
    }
    if let Some(i) = m.index {
        ea = ea.wrapping_add(gpr_get(gpr, i).wrapping_mul(u64::from(m.scale)));
    }
    if m.rip_relative {
        ea = ea.wrapping_add(next_rip);
    }
    // BT* m, r: the signed bit offset selects the operand-sized word holding the bit
    // (fetch_bit_operand).
    if let Op::Alu {
        kind: AluKind::Bt | AluKind::Bts | AluKind::Btr | AluKind::Btc,
        other: Operand::Reg { reg, high_byte },
        ..
    } = insn.op
    {
        let bits = 8 * u64::from(insn.op_size);
        let off = sign_extend(read_gpr(gpr, reg, high_byte, insn.op_size), insn.op_size);
        let sv = (off & !(bits - 1)) as i64;
        ea = ea.wrapping_add((sv >> 3) as u64);
    }
    ea & mask
}

/// Source address (rSI, in `insn.seg`) of a string instruction.
pub fn string_src_address(insn: &Insn, gpr: &[u64; 16]) -> u64 {
    gpr_get(gpr, RSI) & size_mask(insn.addr_size)
}

/// Destination address (rDI, always in ES) of a string instruction.
pub fn string_dst_address(insn: &Insn, gpr: &[u64; 16]) -> u64 {
    gpr_get(gpr, RDI) & size_mask(insn.addr_size)
}

/// The I/O port of INS/OUTS (DX).
pub fn io_port(gpr: &[u64; 16]) -> u16 {
    (gpr_get(gpr, RDX) & 0xffff) as u16
}

/// Linear address of `ea` in segment `seg` with base `seg_base` (__linearize): in 64-bit
/// mode ES, CS, SS and DS have base 0 (seg_base) and nothing is truncated; elsewhere
/// the sum wraps at 4G. Limit, type and canonical checks are [`segment_ok`] and
/// [`is_canonical`].
pub fn linear_address(mode: Mode, seg: u8, seg_base: u64, ea: u64) -> u64 {
    match mode {
        Mode::Prot64 if seg < FS => ea,
        Mode::Prot64 => seg_base.wrapping_add(ea),
        _ => seg_base.wrapping_add(ea) & 0xffff_ffff,
    }
}

/// A linear address is canonical for 48-bit (or 57-bit with LA57) virtual addresses.
pub fn is_canonical(la: u64, la57: bool) -> bool {
    canonical_address(la, la57) == la
}

/// `__canonical_address()`: `la` sign-extended from bit 47 (or 56 with LA57).
pub fn canonical_address(la: u64, la57: bool) -> u64 {
    let shift = if la57 { 7 } else { 16 };
    (((la << shift) as i64) >> shift) as u64
}

/// Segment descriptor facts for [`segment_ok`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentDesc {
    /// Descriptor type field (bit 3 code, bit 2 expand-down/conforming, bit 1 W/R).
    pub kind: u8,
    /// D/B bit.
    pub db: bool,
    /// Limit in bytes (already scaled by G).
    pub limit: u32,
    pub usable: bool,
}

/// Whether an access of `size` bytes at offset `ea` passes the non-64-bit segment
/// checks of __linearize (false means #GP(0), or #SS(0) for SS). Always true in
/// 64-bit mode.
pub fn segment_ok(
    mode: Mode,
    desc: &SegmentDesc,
    ea: u64,
    size: u64,
    write: bool,
    fetch: bool,
) -> bool {
    if mode == Mode::Prot64 {
        return true;
    }
    if !desc.usable {
        return false;
    }
    let code = desc.kind & 8 != 0;
    let rw = desc.kind & 2 != 0;
    // Code segment (outside real mode) or read-only data segment.
    if write && ((mode != Mode::Real && code) || !rw) {
        return false;
    }
    // Unreadable code segment.
    if !fetch && code && !rw {
        return false;
    }
    let mut lim = u64::from(desc.limit);
    if !code && desc.kind & 4 != 0 {
        // Expand-down: valid offsets are above the limit.
        if ea <= lim {
            return false;
        }
        lim = if desc.db { 0xffff_ffff } else { 0xffff };
    }
    if ea > lim {
        return false;
    }
    lim == 0xffff_ffff || size <= lim + 1 - ea
}

/// Bytes of an access of `size` at linear `la` that lie in its first page; the rest
/// goes to the next page (emulator_read_write splits such accesses).
pub fn page_split(la: u64, size: u64) -> u64 {
    let room = 0x1000 - (la & 0xfff);
    size.min(room)
}

/// The value a store writes to memory: the register or immediate of a Store, the
/// register of an Xchg, rAX of STOS (masked to op_size). None for the others (use
/// [`alu`] for ALU forms).
pub fn store_value(insn: &Insn, gpr: &[u64; 16]) -> Option<u64> {
    let size = insn.op_size;
    match insn.op {
        Op::Store { src } => Some(operand_value(gpr, src, size) & size_mask(size)),
        Op::Xchg { reg, high_byte } => Some(read_gpr(gpr, reg, high_byte, size)),
        Op::Stos => Some(read_gpr(gpr, RAX, false, size)),
        _ => None,
    }
}

/// Completes a Load, Xchg or LODS with the value read from memory (op_size bytes):
/// zero- or sign-extends it to the destination and writes it with the width rules.
pub fn complete_load(insn: &Insn, gpr: &mut [u64; 16], value: u64) {
    let size = insn.op_size;
    let v = value & size_mask(size);
    match insn.op {
        Op::Load {
            dst,
            high_byte,
            dst_size,
            sign_extend: sx,
        } => {
            let v = if sx { sign_extend(v, size) } else { v };
            write_gpr(gpr, dst, high_byte, dst_size, v);
        }
        Op::Xchg { reg, high_byte } => write_gpr(gpr, reg, high_byte, size, v),
        Op::Lods => write_gpr(gpr, RAX, false, size, v),
        _ => {}
    }
}

fn parity_even(r: u64) -> bool {
    (r & 0xff).count_ones() & 1 == 0
}

/// RFLAGS with the six arithmetic flags replaced.
fn arith_flags(rflags: u64, r: u64, size: u8, cf: bool, of: bool, af: bool) -> u64 {
    let mut f = rflags & !ARITH_FLAGS;
    let set = |f: &mut u64, c: bool, bit: u64| {
        if c {
            *f |= bit;
        }
    };
    set(&mut f, cf, X86_EFLAGS_CF);
    set(&mut f, parity_even(r), X86_EFLAGS_PF);
    set(&mut f, af, X86_EFLAGS_AF);
    set(&mut f, r & size_mask(size) == 0, X86_EFLAGS_ZF);
    set(&mut f, r & sign_bit(size) != 0, X86_EFLAGS_SF);
    set(&mut f, of, X86_EFLAGS_OF);
    f
}

/// One ALU operation `dst op src` of `size` bytes: (result, new RFLAGS). The flags
/// are what the hardware instruction (run by upstream's fastop) defines: logic ops clear
/// CF, OF and AF; INC/DEC keep CF; NOT changes none; BT* only set CF to the old bit.
pub fn alu_op(kind: AluKind, size: u8, dst: u64, src: u64, rflags: u64) -> (u64, u64) {
    let m = size_mask(size);
    let sign = sign_bit(size);
    let (a, b) = (dst & m, src & m);
    let cf_in = rflags & X86_EFLAGS_CF;
    let add = |b: u64, c: u64, keep_cf: bool| {
        let wide = u128::from(a) + u128::from(b) + u128::from(c);
        let r = (wide as u64) & m;
        let cf = if keep_cf {
            cf_in != 0
        } else {
            wide > u128::from(m)
        };
        let of = (a ^ r) & (b ^ r) & sign != 0;
        let af = (a ^ b ^ r) & 0x10 != 0;
        (r, arith_flags(rflags, r, size, cf, of, af))
    };
    let sub = |b: u64, c: u64, keep_cf: bool| {
        let r = a.wrapping_sub(b).wrapping_sub(c) & m;
        let cf = if keep_cf {
            cf_in != 0
        } else {
            u128::from(a) < u128::from(b) + u128::from(c)
        };
        let of = (a ^ b) & (a ^ r) & sign != 0;
        let af = (a ^ b ^ r) & 0x10 != 0;
        (r, arith_flags(rflags, r, size, cf, of, af))
    };
    let logic = |r: u64| (r, arith_flags(rflags, r, size, false, false, false));
    let bit = |op: fn(u64, u64) -> u64| {
        // Only the offset within the operand counts (fetch_bit_operand).
        let mb = 1u64 << (b & (8 * u64::from(size.clamp(1, 8)) - 1));
        let f = (rflags & !X86_EFLAGS_CF) | if a & mb != 0 { X86_EFLAGS_CF } else { 0 };
        (op(a, mb) & m, f)
    };
    match kind {
        AluKind::Add => add(b, 0, false),
        AluKind::Adc => add(b, cf_in, false),
        AluKind::Sub | AluKind::Cmp => sub(b, 0, false),
        AluKind::Sbb => sub(b, cf_in, false),
        AluKind::Inc => add(1, 0, true),
        AluKind::Dec => sub(1, 0, true),
        AluKind::And | AluKind::Test => logic(a & b),
        AluKind::Or => logic(a | b),
        AluKind::Xor => logic(a ^ b),
        AluKind::Neg => {
            let r = 0u64.wrapping_sub(a) & m;
            let f = arith_flags(rflags, r, size, a != 0, a == sign, (a ^ r) & 0x10 != 0);
            (r, f)
        }
        AluKind::Not => (!a & m, rflags),
        AluKind::Bt => bit(|a, _| a),
        AluKind::Bts => bit(|a, mb| a | mb),
        AluKind::Btr => bit(|a, mb| a & !mb),
        AluKind::Btc => bit(|a, mb| a ^ mb),
    }
}

/// Executes an ALU instruction given `mem`, the op_size bytes read from its memory
/// operand. Returns the value to write back to memory (None for CMP/TEST/BT and for
/// register destinations, which are written into `gpr` here) and the new RFLAGS.
/// SCAS is handled too (flags of rAX - mem). Other instructions change nothing.
pub fn alu(insn: &Insn, gpr: &mut [u64; 16], rflags: u64, mem: u64) -> (Option<u64>, u64) {
    let size = insn.op_size;
    match insn.op {
        Op::Alu {
            kind,
            other,
            mem_is_dst,
            writes_back,
        } => {
            let o = operand_value(gpr, other, size);
            if mem_is_dst {
                let (r, f) = alu_op(kind, size, mem, o, rflags);
                (if writes_back { Some(r) } else { None }, f)
            } else {
                let (r, f) = alu_op(kind, size, o, mem, rflags);
                if let (true, Operand::Reg { reg, high_byte }) = (writes_back, other) {
                    write_gpr(gpr, reg, high_byte, size, r);
                }
                (None, f)
            }
        }
        Op::Scas => {
            let a = read_gpr(gpr, RAX, false, size);
            (None, alu_op(AluKind::Cmp, size, a, mem, rflags).1)
        }
        _ => (None, rflags),
    }
}

/// RFLAGS after one CMPS element: flags of `src` (read at rSI) - `dst` (read at rDI).
pub fn cmps_flags(insn: &Insn, rflags: u64, src: u64, dst: u64) -> u64 {
    alu_op(AluKind::Cmp, insn.op_size, src, dst, rflags).1
}

/// Iterations of a string instruction: rCX masked by the address size with REP, else
/// 1. Zero means the instruction does nothing but advance RIP.
pub fn string_count(insn: &Insn, gpr: &[u64; 16]) -> u64 {
    if insn.rep.is_some() {
        gpr_get(gpr, RCX) & size_mask(insn.addr_size)
    } else {
        1
    }
}

/// assign_register: writes of address-size registers merge below 32 bits and
/// zero-extend at 32.
fn assign_register(gpr: &mut [u64; 16], reg: u8, value: u64, addr_size: u8) {
    write_gpr(gpr, reg, false, addr_size, value);
}

/// Advances rSI/rDI by `n` elements in the direction of RFLAGS.DF and, with REP,
/// decrements rCX by `n`, all with the address-size width (string_addr_inc,
/// register_address_increment).
pub fn string_advance(insn: &Insn, gpr: &mut [u64; 16], rflags: u64, n: u64) {
    let step = n.wrapping_mul(u64::from(insn.op_size));
    let delta = if rflags & X86_EFLAGS_DF != 0 {
        0u64.wrapping_sub(step)
    } else {
        step
    };
    let (si, di) = match insn.op {
        Op::Movs | Op::Cmps => (true, true),
        Op::Lods | Op::Outs => (true, false),
        Op::Stos | Op::Ins | Op::Scas => (false, true),
        _ => (false, false),
    };
    let a = insn.addr_size;
    if si {
        let v = gpr_get(gpr, RSI).wrapping_add(delta);
        assign_register(gpr, RSI, v, a);
    }
    if di {
        let v = gpr_get(gpr, RDI).wrapping_add(delta);
        assign_register(gpr, RDI, v, a);
    }
    if insn.rep.is_some() {
        let v = gpr_get(gpr, RCX).wrapping_sub(n);
        assign_register(gpr, RCX, v, a);
    }
}

/// Whether a string instruction is finished after an element, given the updated
/// registers and flags: not REP, rCX exhausted, or the REPE/REPNE condition of
/// CMPS/SCAS failed (string_insn_completed).
pub fn string_done(insn: &Insn, gpr: &[u64; 16], rflags: u64) -> bool {
    let Some(rep) = insn.rep else {
        return true;
    };
    if string_count(insn, gpr) == 0 {
        return true;
    }
    let zf = rflags & X86_EFLAGS_ZF != 0;
    matches!(insn.op, Op::Cmps | Op::Scas)
        && match rep {
            Rep::Repe => !zf,
            Rep::Repne => zf,
        }
}

/// Elements to read from the port in one exit for INS, as pio_in_emulated reads ahead:
/// min(count, room in rDI's page, 1024 bytes / size), at least 1. (Upstream compares the
/// room in bytes against element counts; kept as is.)
pub fn ins_read_ahead(insn: &Insn, gpr: &[u64; 16], rflags: u64) -> u64 {
    let count = string_count(insn, gpr);
    let off = gpr_get(gpr, RDI) & 0xfff;
    let in_page = if rflags & X86_EFLAGS_DF != 0 {
        off
    } else {
        0x1000 - off
    };
    let per_buf = 1024 / u64::from(insn.op_size.max(1));
    in_page.min(per_buf).min(count).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const RBX: u8 = 3;

    fn d64(bytes: &[u8]) -> Insn {
        decode(bytes, Mode::Prot64).unwrap()
    }

    fn reg(reg: u8) -> Operand {
        Operand::Reg {
            reg,
            high_byte: false,
        }
    }

    fn mem(base: Option<u8>, index: Option<u8>, scale: u8, disp: u64) -> Option<MemOperand> {
        Some(MemOperand {
            base,
            index,
            scale,
            disp,
            rip_relative: false,
        })
    }

    // ---- mode ----------------------------------------------------------------

    #[test]
    fn modes() {
        assert_eq!(mode(0, 0, 0, false, false), Mode::Real);
        assert_eq!(mode(X86_CR0_PE, X86_EFLAGS_VM, 0, false, false), Mode::Vm86);
        assert_eq!(mode(X86_CR0_PE, 0, EFER_LMA, true, false), Mode::Prot64);
        // Compatibility mode: LMA without CS.L.
        assert_eq!(mode(X86_CR0_PE, 0, EFER_LMA, false, true), Mode::Prot32);
        // CS.L means nothing without LMA.
        assert_eq!(mode(X86_CR0_PE, 0, 0, true, false), Mode::Prot16);
    }

    // ---- decode ---------------------------------------------------------------

    #[test]
    fn mov_store_reg() {
        // mov %eax,(%rbx)
        let i = d64(&[0x89, 0x03]);
        assert_eq!(i.len, 2);
        assert_eq!(i.op, Op::Store { src: reg(0) });
        assert_eq!((i.op_size, i.addr_size, i.seg), (4, 8, DS));
        assert_eq!(i.modrm_mem, mem(Some(RBX), None, 1, 0));
        assert!(!i.lock && i.rep.is_none());
        assert!(i.writes_memory() && !i.reads_memory());
        let mut g = [0u64; 16];
        g[0] = 0xdead_beef_1234_5678;
        g[3] = 0xfee0_0030;
        assert_eq!(effective_address(&i, &g, 0), 0xfee0_0030);
        assert_eq!(store_value(&i, &g), Some(0x1234_5678));
    }

    #[test]
    fn mov_load_rip_relative() {
        // mov 0x10(%rip),%ecx
        let i = d64(&[0x8b, 0x0d, 0x10, 0, 0, 0]);
        assert_eq!(i.len, 6);
        assert_eq!(
            i.op,
            Op::Load {
                dst: 1,
                high_byte: false,
                dst_size: 4,
                sign_extend: false
            }
        );
        let m = i.modrm_mem.unwrap();
        assert!(m.rip_relative && m.base.is_none() && m.disp == 0x10);
        let g = [0u64; 16];
        assert_eq!(effective_address(&i, &g, 0x1000 + 6), 0x1016);
        // Negative displacement: mov -0x10(%rip),%ecx.
        let i = d64(&[0x8b, 0x0d, 0xf0, 0xff, 0xff, 0xff]);
        assert_eq!(effective_address(&i, &g, 0x1006), 0xff6);
        // In 32-bit mode the same bytes are an absolute disp32.
        let i = decode(&[0x8b, 0x0d, 0x10, 0, 0, 0], Mode::Prot32).unwrap();
        assert!(!i.modrm_mem.unwrap().rip_relative);
        assert_eq!(effective_address(&i, &g, 0x1006), 0x10);
        // addr32 mov 0x10(%eip),%ecx: the sum is truncated to 32 bits.
        let i = d64(&[0x67, 0x8b, 0x0d, 0x10, 0, 0, 0]);
        assert_eq!(i.addr_size, 4);
        assert_eq!(effective_address(&i, &g, 0x1_ffff_fff8), 0x8);
    }

    #[test]
    fn movzx_movsx_movsxd() {
        // movzbl (%rsi),%eax
        let i = d64(&[0x0f, 0xb6, 0x06]);
        assert_eq!(i.len, 3);
        assert_eq!(i.op_size, 1);
        assert_eq!(i.opcode, 0x0fb6);
        assert_eq!(
            i.op,
            Op::Load {
                dst: 0,
                high_byte: false,
                dst_size: 4,
                sign_extend: false
            }
        );
        let mut g = [u64::MAX; 16];
        complete_load(&i, &mut g, 0x1ff);
        assert_eq!(g[0], 0xff);
        // movswl (%rbx),%eax
        let i = d64(&[0x0f, 0xbf, 0x03]);
        assert_eq!(i.op_size, 2);
        complete_load(&i, &mut g, 0x8001);
        assert_eq!(g[0], 0xffff_8001);
        // movsbq (%rbx),%r9
        let i = d64(&[0x4c, 0x0f, 0xbe, 0x0b]);
        complete_load(&i, &mut g, 0x80);
        assert_eq!(g[9], 0xffff_ffff_ffff_ff80);
        // movzbw (%rbx),%ax merges into the low 16 bits.
        let i = d64(&[0x66, 0x0f, 0xb6, 0x03]);
        g[0] = 0x1111_2222_3333_4444;
        complete_load(&i, &mut g, 0xab);
        assert_eq!(g[0], 0x1111_2222_3333_00ab);
        // movslq (%rbx),%rax: reads 4 bytes, sign-extends to 8.
        let i = d64(&[0x48, 0x63, 0x03]);
        assert_eq!(i.op_size, 4);
        complete_load(&i, &mut g, 0x8000_0000);
        assert_eq!(g[0], 0xffff_ffff_8000_0000);
        // movsxd without REX.W: a 32-bit move (zero-extends into RAX).
        let i = d64(&[0x63, 0x03]);
        assert_eq!(i.op_size, 4);
        complete_load(&i, &mut g, 0x8000_0000);
        assert_eq!(g[0], 0x8000_0000);
        // 63 is ARPL outside 64-bit mode.
        assert_eq!(
            decode(&[0x63, 0x03], Mode::Prot32),
            Err(DecodeError::Unsupported)
        );
    }

    #[test]
    fn rep_outsb_real_mode() {
        // rep outsb
        let i = decode(&[0xf3, 0x6e], Mode::Real).unwrap();
        assert_eq!(i.op, Op::Outs);
        assert_eq!((i.len, i.op_size, i.addr_size, i.seg), (2, 1, 2, DS));
        assert_eq!(i.rep, Some(Rep::Repe));
        assert!(i.is_string() && i.reads_memory() && !i.writes_memory());
        // es rep outsw in 32-bit code: overridable source, 16-bit elements.
        let i = decode(&[0x26, 0xf3, 0x66, 0x6f], Mode::Prot32).unwrap();
        assert_eq!((i.op, i.op_size, i.addr_size, i.seg), (Op::Outs, 2, 4, ES));
        // rex.w insl stays a doubleword.
        let i = d64(&[0x48, 0x6d]);
        assert_eq!((i.op, i.op_size, i.seg), (Op::Ins, 4, ES));
        // fs insb: the destination is ES regardless.
        let i = d64(&[0x64, 0x6c]);
        assert_eq!(i.seg, ES);
    }

    #[test]
    fn string_ops() {
        // rep movsq
        let i = d64(&[0xf3, 0x48, 0xa5]);
        assert_eq!((i.op, i.op_size, i.rep), (Op::Movs, 8, Some(Rep::Repe)));
        assert!(i.reads_memory() && i.writes_memory());
        // rep stosl
        let i = d64(&[0xf3, 0xab]);
        assert_eq!((i.op, i.op_size, i.seg), (Op::Stos, 4, ES));
        let mut g = [0u64; 16];
        g[0] = 0x1_2345_6789;
        g[7] = 0x5000;
        g[6] = 0x6000;
        assert_eq!(store_value(&i, &g), Some(0x2345_6789));
        assert_eq!(effective_address(&i, &g, 0), 0x5000);
        // lodsw
        let i = decode(&[0xad], Mode::Real).unwrap();
        assert_eq!((i.op, i.op_size), (Op::Lods, 2));
        assert_eq!(effective_address(&i, &g, 0), 0x6000);
        complete_load(&i, &mut g, 0xbeef);
        assert_eq!(g[0], 0x1_2345_beef);
        // repne scasb, repe cmpsb
        let i = d64(&[0xf2, 0xae]);
        assert_eq!((i.op, i.rep), (Op::Scas, Some(Rep::Repne)));
        let i = d64(&[0xf3, 0xa6]);
        assert_eq!((i.op, i.seg), (Op::Cmps, DS));
        // REP on a non-string instruction is ignored.
        let i = d64(&[0xf3, 0x89, 0x03]);
        assert!(i.rep.is_none());
    }

    #[test]
    fn sixteen_bit_addressing() {
        // Real mode: mov %ah,(%bx)
        let i = decode(&[0x88, 0x27], Mode::Real).unwrap();
        assert_eq!(
            i.op,
            Op::Store {
                src: Operand::Reg {
                    reg: 0,
                    high_byte: true
                }
            }
        );
        assert_eq!((i.op_size, i.addr_size, i.seg), (1, 2, DS));
        assert_eq!(i.modrm_mem, mem(Some(RBX), None, 1, 0));
        let mut g = [0u64; 16];
        g[0] = 0xa5c3;
        g[3] = 0xffff_0010;
        assert_eq!(effective_address(&i, &g, 0), 0x10);
        assert_eq!(store_value(&i, &g), Some(0xa5));
        // mov 4(%bp,%si),%ax: BP-based defaults to SS, wraps at 64K.
        let i = decode(&[0x8b, 0x42, 0x04], Mode::Real).unwrap();
        assert_eq!(i.seg, SS);
        assert_eq!(i.modrm_mem, mem(Some(RBP), Some(RSI), 1, 4));
        g[5] = 0xfffe;
        g[6] = 4;
        assert_eq!(effective_address(&i, &g, 0), 6);
        // mov 0x1234,%ax (mod 00 r/m 110 is disp16, DS)
        let i = decode(&[0x8b, 0x06, 0x34, 0x12], Mode::Real).unwrap();
        assert_eq!((i.len, i.seg), (4, DS));
        assert_eq!(effective_address(&i, &g, 0), 0x1234);
        // mov -2(%bx,%di),%al with disp8 sign extension.
        let i = decode(&[0x8a, 0x41, 0xfe], Mode::Real).unwrap();
        g[3] = 0x100;
        g[7] = 0x1;
        assert_eq!(effective_address(&i, &g, 0), 0xff);
        // a16 mov %eax,(%bx) from 32-bit code.
        let i = decode(&[0x67, 0x89, 0x07], Mode::Prot32).unwrap();
        assert_eq!((i.op_size, i.addr_size, i.len), (4, 2, 3));
        assert_eq!(i.modrm_mem, mem(Some(RBX), None, 1, 0));
        // a32 mov %ax,(%ebx) from real mode.
        let i = decode(&[0x67, 0x89, 0x03], Mode::Real).unwrap();
        assert_eq!((i.op_size, i.addr_size), (2, 4));
        // Big real mode (CS.D=1) defaults to 32-bit sizes.
        let i = decode_with_cs_d(&[0x89, 0x03], Mode::Real, true).unwrap();
        assert_eq!((i.op_size, i.addr_size), (4, 4));
    }

    #[test]
    fn sib_and_displacements() {
        // mov %rax,0x8(%rbx,%rcx,4)
        let i = d64(&[0x48, 0x89, 0x44, 0x8b, 0x08]);
        assert_eq!(i.len, 5);
        assert_eq!(i.op_size, 8);
        assert_eq!(i.modrm_mem, mem(Some(RBX), Some(1), 4, 8));
        let mut g = [0u64; 16];
        g[3] = 0x1000;
        g[1] = 3;
        assert_eq!(effective_address(&i, &g, 0), 0x1014);
        // mov %fs:0x28,%rax (SIB, no base, no index)
        let i = d64(&[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0]);
        assert_eq!((i.len, i.seg), (9, FS));
        assert_eq!(i.modrm_mem, mem(None, None, 1, 0x28));
        // mov 0x10(,%ecx,8),%eax in 32-bit mode: wraps at 4G.
        let i = decode(&[0x8b, 0x04, 0xcd, 0x10, 0, 0, 0], Mode::Prot32).unwrap();
        assert_eq!(i.modrm_mem, mem(None, Some(1), 8, 0x10));
        g[1] = 0x2000_0000;
        assert_eq!(effective_address(&i, &g, 0), 0x10);
        // mov 0x10(%ebx),%eax with EBX near 4G.
        let i = decode(&[0x8b, 0x43, 0x10], Mode::Prot32).unwrap();
        g[3] = 0xffff_fff8;
        assert_eq!(effective_address(&i, &g, 0), 0x8);
        // mov -0x8(%rbx),%eax: disp8 is sign-extended.
        let i = d64(&[0x8b, 0x43, 0xf8]);
        g[3] = 0x1000;
        assert_eq!(effective_address(&i, &g, 0), 0xff8);
        // mov 0x12345678(%rbx),%eax: disp32.
        let i = d64(&[0x8b, 0x83, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(effective_address(&i, &g, 0), 0x1234_6678);
        // mov (%esp),%eax and mov 0(%ebp),%eax default to SS.
        assert_eq!(decode(&[0x8b, 0x04, 0x24], Mode::Prot32).unwrap().seg, SS);
        assert_eq!(decode(&[0x8b, 0x45, 0x00], Mode::Prot32).unwrap().seg, SS);
        // mov 0x0(%r13),%al: R13 is not RBP (adjust_modrm_seg), and needs a disp8.
        let i = d64(&[0x41, 0x8a, 0x45, 0x00]);
        assert_eq!(i.modrm_mem, mem(Some(13), None, 1, 0));
        assert_eq!(i.seg, DS);
        // mov (%r12),%eax needs a SIB; mov (%rax,%r12,2),%eax uses R12 as index.
        let i = d64(&[0x41, 0x8b, 0x04, 0x24]);
        assert_eq!(i.modrm_mem, mem(Some(12), None, 1, 0));
        let i = d64(&[0x42, 0x8b, 0x04, 0x60]);
        assert_eq!(i.modrm_mem, mem(Some(0), Some(12), 2, 0));
        // a32 mov (%ebx),%eax in 64-bit mode truncates the address.
        let i = d64(&[0x67, 0x8b, 0x03]);
        g[3] = 0xffff_ffff_0000_1234;
        assert_eq!(effective_address(&i, &g, 0), 0x1234);
    }

    #[test]
    fn byte_registers_and_rex() {
        // mov 0x0(%rbp),%ah / with REX: %spl
        let i = d64(&[0x8a, 0x65, 0x00]);
        assert_eq!(
            i.op,
            Op::Load {
                dst: 0,
                high_byte: true,
                dst_size: 1,
                sign_extend: false
            }
        );
        assert_eq!(i.seg, SS);
        let mut g = [0u64; 16];
        g[0] = 0x1111;
        complete_load(&i, &mut g, 0xab);
        assert_eq!(g[0], 0xab11);
        let i = d64(&[0x40, 0x8a, 0x65, 0x00]);
        assert_eq!(
            i.op,
            Op::Load {
                dst: 4,
                high_byte: false,
                dst_size: 1,
                sign_extend: false
            }
        );
        // mov %r9b,(%rbx)
        let i = d64(&[0x44, 0x88, 0x0b]);
        assert_eq!(i.op, Op::Store { src: reg(9) });
    }

    #[test]
    fn prefix_rules() {
        // rex.W over 66: mov %rax,(%rbx)
        let i = d64(&[0x66, 0x48, 0x89, 0x03]);
        assert_eq!(i.op_size, 8);
        // A REX followed by a legacy prefix is ignored: 16-bit store.
        let i = d64(&[0x48, 0x66, 0x89, 0x03]);
        assert_eq!((i.op_size, i.len), (2, 4));
        // Two REX prefixes: the last one counts (REX.B, no REX.W).
        let i = d64(&[0x48, 0x41, 0x89, 0x03]);
        assert_eq!(i.op_size, 4);
        assert_eq!(i.modrm_mem, mem(Some(11), None, 1, 0));
        // The last segment override wins.
        assert_eq!(d64(&[0x26, 0x64, 0x89, 0x03]).seg, FS);
        assert_eq!(d64(&[0x65, 0x89, 0x03]).seg, GS);
        // ss override on a DS default, ds override on an SS default.
        assert_eq!(decode(&[0x36, 0x89, 0x03], Mode::Prot32).unwrap().seg, SS);
        assert_eq!(
            decode(&[0x3e, 0x89, 0x04, 0x24], Mode::Prot32).unwrap().seg,
            DS
        );
        // 40-4F are INC/DEC outside 64-bit mode.
        assert_eq!(
            decode(&[0x48, 0x89, 0x03], Mode::Prot32),
            Err(DecodeError::Unsupported)
        );
        // 66 in 16-bit code selects 32-bit operands.
        assert_eq!(decode(&[0x66, 0x89, 0x07], Mode::Real).unwrap().op_size, 4);
    }

    #[test]
    fn moffs() {
        // movabs 0x1122334455667788,%rax
        let i = d64(&[0x48, 0xa1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(i.len, 10);
        assert_eq!(i.op_size, 8);
        assert_eq!(i.modrm_mem, mem(None, None, 1, 0x1122_3344_5566_7788));
        assert_eq!(effective_address(&i, &[0; 16], 0), 0x1122_3344_5566_7788);
        // mov %al,0x12345678 in 32-bit mode
        let i = decode(&[0xa2, 0x78, 0x56, 0x34, 0x12], Mode::Prot32).unwrap();
        assert_eq!((i.len, i.op_size), (5, 1));
        assert_eq!(i.op, Op::Store { src: reg(0) });
        // addr32 mov 0x12345678,%eax in 64-bit mode: 4-byte moffs.
        let i = d64(&[0x67, 0xa1, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!((i.len, i.addr_size), (6, 4));
        // mov 0x1234,%ax in real mode with an fs override.
        let i = decode(&[0x64, 0xa1, 0x34, 0x12], Mode::Real).unwrap();
        assert_eq!((i.len, i.seg, i.op_size), (4, FS, 2));
    }

    #[test]
    fn store_immediates() {
        // movl $0x12345678,(%rbx)
        let i = d64(&[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(i.len, 6);
        assert_eq!(store_value(&i, &[0; 16]), Some(0x1234_5678));
        // movq $-1,(%rbx): imm32 sign-extended to 64.
        let i = d64(&[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(store_value(&i, &[0; 16]), Some(u64::MAX));
        // movw $0x1234,0x10(%rbx)
        let i = d64(&[0x66, 0xc7, 0x43, 0x10, 0x34, 0x12]);
        assert_eq!((i.len, i.op_size), (6, 2));
        assert_eq!(store_value(&i, &[0; 16]), Some(0x1234));
        // movb $0x80,(%rbx)
        let i = d64(&[0xc6, 0x03, 0x80]);
        assert_eq!(store_value(&i, &[0; 16]), Some(0x80));
        // movl $1,0x10(%rip): the immediate follows the displacement.
        let i = d64(&[0xc7, 0x05, 0x10, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(i.len, 10);
        assert_eq!(effective_address(&i, &[0; 16], 0x100a), 0x101a);
        // C7 /1 is #UD.
        assert_eq!(d64_err(&[0xc7, 0x0b, 0, 0, 0, 0]), DecodeError::Invalid);
        // movnti %rax,(%rbx)
        let i = d64(&[0x48, 0x0f, 0xc3, 0x03]);
        assert_eq!((i.op, i.op_size), (Op::Store { src: reg(0) }, 8));
    }

    fn d64_err(bytes: &[u8]) -> DecodeError {
        decode(bytes, Mode::Prot64).unwrap_err()
    }

    #[test]
    fn soft_exception_lengths() {
        assert_eq!(soft_exception_len(&[0xcc, 0x90], Mode::Prot64), Some(1));
        assert_eq!(soft_exception_len(&[0xcd, 0x03], Mode::Prot64), Some(2));
        assert_eq!(soft_exception_len(&[0xce], Mode::Prot32), Some(1));
        // INTO is #UD in 64-bit mode, where 0x40-0x4f are REX prefixes.
        assert_eq!(soft_exception_len(&[0xce], Mode::Prot64), None);
        assert_eq!(soft_exception_len(&[0x48, 0xcc], Mode::Prot64), Some(2));
        assert_eq!(soft_exception_len(&[0x48, 0xcc], Mode::Prot32), None);
        assert_eq!(soft_exception_len(&[0x66, 0x2e, 0xcc], Mode::Real), Some(3));
        // Not a soft exception, truncated, or over 15 bytes.
        assert_eq!(soft_exception_len(&[0x90], Mode::Prot64), None);
        assert_eq!(soft_exception_len(&[0xcd], Mode::Prot64), None);
        assert_eq!(soft_exception_len(&[0x66; 15], Mode::Prot64), None);
        let mut long = [0x66u8; 16];
        long[15] = 0xcc;
        assert_eq!(soft_exception_len(&long, Mode::Prot64), None);
    }

    #[test]
    fn mov_dr_decoding() {
        // mov %dr0,%rax: 0f 21 c0, 64-bit operand, no memory.
        let i = d64(&[0x0f, 0x21, 0xc0]);
        let op = Op::MovDr {
            dr: 0,
            gpr: 0,
            to_dr: false,
        };
        assert_eq!((i.op, i.op_size, i.len, i.modrm_mem), (op, 8, 3, None));
        assert!(!i.reads_memory() && !i.writes_memory() && !i.is_string());
        // mov %rbx,%dr7: 0f 23 fb.
        let i = d64(&[0x0f, 0x23, 0xfb]);
        let op = Op::MovDr {
            dr: 7,
            gpr: RBX,
            to_dr: true,
        };
        assert_eq!(i.op, op);
        // The mod bits do not make it a memory form: no displacement is read.
        let i = d64(&[0x0f, 0x21, 0x05]);
        assert_eq!((i.len, i.modrm_mem), (3, None));
        // REX.R names DR8-15 (for #UD), REX.B R8-15.
        let i = d64(&[0x45, 0x0f, 0x23, 0xc1]);
        let op = Op::MovDr {
            dr: 8,
            gpr: 9,
            to_dr: true,
        };
        assert_eq!(i.op, op);
        // 32-bit operands outside 64-bit mode, operand-size prefix or not.
        let i = decode(&[0x66, 0x0f, 0x21, 0xf8], Mode::Prot32).unwrap();
        assert_eq!((i.op_size, i.len), (4, 4));
        assert_eq!(
            decode(&[0x0f, 0x21], Mode::Prot32),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn alu_decoding() {
        // cmpl $1,(%rbx)
        let i = d64(&[0x83, 0x3b, 0x01]);
        assert_eq!(
            i.op,
            Op::Alu {
                kind: AluKind::Cmp,
                other: Operand::Imm(1),
                mem_is_dst: true,
                writes_back: false
            }
        );
        // orl $0xffffff80 (imm8 -128),(%rbx)
        let i = d64(&[0x83, 0x0b, 0x80]);
        assert!(matches!(
            i.op,
            Op::Alu {
                kind: AluKind::Or,
                other: Operand::Imm(0xffff_ff80),
                ..
            }
        ));
        // andq $0xfffffffffffff000,(%rbx): imm32 sign-extended.
        let i = d64(&[0x48, 0x81, 0x23, 0x00, 0xf0, 0xff, 0xff]);
        assert!(matches!(
            i.op,
            Op::Alu {
                kind: AluKind::And,
                other: Operand::Imm(0xffff_ffff_ffff_f000),
                ..
            }
        ));
        // add (%rbx),%ecx: register destination.
        let i = d64(&[0x03, 0x0b]);
        assert_eq!(
            i.op,
            Op::Alu {
                kind: AluKind::Add,
                other: reg(1),
                mem_is_dst: false,
                writes_back: true
            }
        );
        assert!(i.reads_memory() && !i.writes_memory());
        // xor %dl,(%rbx); sub %eax,(%rbx); sbb; adc
        assert!(matches!(
            d64(&[0x30, 0x13]).op,
            Op::Alu {
                kind: AluKind::Xor,
                mem_is_dst: true,
                ..
            }
        ));
        assert!(matches!(
            d64(&[0x29, 0x03]).op,
            Op::Alu {
                kind: AluKind::Sub,
                ..
            }
        ));
        // testb $0x80,(%rbx)
        let i = d64(&[0xf6, 0x03, 0x80]);
        assert_eq!((i.len, i.op_size), (3, 1));
        assert!(matches!(
            i.op,
            Op::Alu {
                kind: AluKind::Test,
                other: Operand::Imm(0x80),
                writes_back: false,
                ..
            }
        ));
        // test %eax,(%rbx)
        assert!(matches!(
            d64(&[0x85, 0x03]).op,
            Op::Alu {
                kind: AluKind::Test,
                writes_back: false,
                ..
            }
        ));
        // notl (%rbx), negl (%rbx), incb (%rbx), decq (%rbx)
        assert!(matches!(
            d64(&[0xf7, 0x13]).op,
            Op::Alu {
                kind: AluKind::Not,
                ..
            }
        ));
        assert!(matches!(
            d64(&[0xf7, 0x1b]).op,
            Op::Alu {
                kind: AluKind::Neg,
                ..
            }
        ));
        assert_eq!(d64(&[0xfe, 0x03]).op_size, 1);
        let i = d64(&[0x48, 0xff, 0x0b]);
        assert!(matches!(
            i.op,
            Op::Alu {
                kind: AluKind::Dec,
                ..
            }
        ));
        assert_eq!(i.op_size, 8);
        // xchg %eax,(%rbx)
        let i = d64(&[0x87, 0x03]);
        assert_eq!(
            i.op,
            Op::Xchg {
                reg: 0,
                high_byte: false
            }
        );
        // 82 is addb outside 64-bit mode and #UD inside.
        assert!(decode(&[0x82, 0x03, 0x01], Mode::Prot32).is_ok());
        assert_eq!(d64_err(&[0x82, 0x03, 0x01]), DecodeError::Invalid);
        // bts %eax,(%rbx); btl $3,(%rbx)
        assert!(matches!(
            d64(&[0x0f, 0xab, 0x03]).op,
            Op::Alu {
                kind: AluKind::Bts,
                writes_back: true,
                ..
            }
        ));
        assert!(matches!(
            d64(&[0x0f, 0xba, 0x23, 0x03]).op,
            Op::Alu {
                kind: AluKind::Bt,
                other: Operand::Imm(3),
                writes_back: false,
                ..
            }
        ));
    }

    #[test]
    fn lock_rules() {
        // lock addl $1,(%rbx)
        let i = d64(&[0xf0, 0x83, 0x03, 0x01]);
        assert!(i.lock);
        // lock xchg is fine; lock bts too.
        assert!(d64(&[0xf0, 0x87, 0x03]).lock);
        assert!(d64(&[0xf0, 0x0f, 0xab, 0x03]).lock);
        // lock mov, lock cmp, lock add to a register, lock bt, lock on a
        // register-only form: #UD.
        assert_eq!(d64_err(&[0xf0, 0x89, 0x03]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0xf0, 0x39, 0x03]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0xf0, 0x03, 0x03]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0xf0, 0x0f, 0xa3, 0x03]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0xf0, 0x01, 0xc3]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0xf0, 0xa4]), DecodeError::Invalid);
    }

    #[test]
    fn decode_errors() {
        // Truncated opcode, ModRM, SIB, displacement, immediate.
        assert_eq!(d64_err(&[]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0x66]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0x8b]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0x8b, 0x04]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0x8b, 0x0d, 0x10, 0]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0xc7, 0x03, 0x78]), DecodeError::Truncated);
        assert_eq!(d64_err(&[0x0f]), DecodeError::Truncated);
        // 14 prefixes + 2-byte instruction = 16 bytes: #GP.
        let mut v: Vec<u8> = vec![0x66; 14];
        v.extend_from_slice(&[0x89, 0x03]);
        assert_eq!(d64_err(&v), DecodeError::TooLong);
        // 13 prefixes + 2 = 15 bytes is fine.
        let i = d64(&v[1..]);
        assert_eq!(i.len, 15);
        // ud2, register-only forms, MUL, CALL through memory: not emulated.
        assert_eq!(d64_err(&[0x0f, 0x0b]), DecodeError::Unsupported);
        assert_eq!(d64_err(&[0x89, 0xc3]), DecodeError::Unsupported);
        assert_eq!(d64_err(&[0xf7, 0x23]), DecodeError::Unsupported);
        assert_eq!(d64_err(&[0xff, 0x13]), DecodeError::Unsupported);
        assert_eq!(
            d64_err(&[0xc4, 0xe1, 0x79, 0x6f, 0x03]),
            DecodeError::Unsupported
        );
        // FE /2 and BA /0 are #UD.
        assert_eq!(d64_err(&[0xfe, 0x13]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0x0f, 0xba, 0x03, 0x01]), DecodeError::Invalid);
        // movnti has no register or 16-bit form.
        assert_eq!(d64_err(&[0x0f, 0xc3, 0xc3]), DecodeError::Invalid);
        assert_eq!(d64_err(&[0x66, 0x0f, 0xc3, 0x03]), DecodeError::Invalid);
        // Extra bytes after the instruction are ignored.
        assert_eq!(d64(&[0x89, 0x03, 0xf4, 0xf4]).len, 2);
    }

    // ---- register writes -------------------------------------------------------

    #[test]
    fn gpr_width_rules() {
        let mut g = [0x1111_2222_3333_4444u64; 16];
        write_gpr(&mut g, 0, false, 1, 0x1ff);
        assert_eq!(g[0], 0x1111_2222_3333_44ff);
        write_gpr(&mut g, 1, true, 1, 0xab);
        assert_eq!(g[1], 0x1111_2222_3333_ab44);
        write_gpr(&mut g, 2, false, 2, 0x12_5678);
        assert_eq!(g[2], 0x1111_2222_3333_5678);
        write_gpr(&mut g, 3, false, 4, 0xffff_ffff_8765_4321);
        assert_eq!(g[3], 0x8765_4321);
        write_gpr(&mut g, 15, false, 8, 7);
        assert_eq!(g[15], 7);
        // Out-of-range register numbers are ignored rather than panicking.
        write_gpr(&mut g, 16, false, 8, 7);
        assert_eq!(read_gpr(&g, 1, true, 1), 0xab);
        assert_eq!(read_gpr(&g, 16, false, 8), 0);
    }

    #[test]
    fn xchg_completion() {
        // xchg %cx,(%rbx)
        let i = d64(&[0x66, 0x87, 0x0b]);
        let mut g = [0u64; 16];
        g[1] = 0xffff_ffff_0000_1234;
        assert_eq!(store_value(&i, &g), Some(0x1234));
        complete_load(&i, &mut g, 0x5678);
        assert_eq!(g[1], 0xffff_ffff_0000_5678);
    }

    // ---- ALU --------------------------------------------------------------------

    fn flags(f: u64) -> u64 {
        f & ARITH_FLAGS
    }

    #[test]
    fn alu_flags() {
        // cmp: 1 - 2 borrows.
        let (r, f) = alu_op(AluKind::Cmp, 4, 1, 2, 0);
        assert_eq!(r, 0xffff_ffff);
        assert_eq!(
            flags(f),
            X86_EFLAGS_CF | X86_EFLAGS_SF | X86_EFLAGS_AF | X86_EFLAGS_PF
        );
        // sub: 0x80 - 1 overflows a signed byte.
        let (r, f) = alu_op(AluKind::Sub, 1, 0x80, 1, 0);
        assert_eq!(r, 0x7f);
        assert_eq!(flags(f), X86_EFLAGS_OF | X86_EFLAGS_AF);
        // cmp equal: ZF and PF only.
        let (_, f) = alu_op(AluKind::Cmp, 8, 5, 5, X86_EFLAGS_CF | X86_EFLAGS_OF);
        assert_eq!(flags(f), X86_EFLAGS_ZF | X86_EFLAGS_PF);
        // add: 0xff + 1 carries out.
        let (r, f) = alu_op(AluKind::Add, 1, 0xff, 1, 0);
        assert_eq!(r, 0);
        assert_eq!(
            flags(f),
            X86_EFLAGS_CF | X86_EFLAGS_ZF | X86_EFLAGS_AF | X86_EFLAGS_PF
        );
        // add: 0x7fffffff + 1 overflows.
        let (r, f) = alu_op(AluKind::Add, 4, 0x7fff_ffff, 1, 0);
        assert_eq!(r, 0x8000_0000);
        assert_eq!(
            flags(f),
            X86_EFLAGS_OF | X86_EFLAGS_SF | X86_EFLAGS_AF | X86_EFLAGS_PF
        );
        // 64-bit add carry.
        let (r, f) = alu_op(AluKind::Add, 8, u64::MAX, 2, 0);
        assert_eq!(r, 1);
        assert_eq!(flags(f), X86_EFLAGS_CF | X86_EFLAGS_AF);
        // adc / sbb use CF.
        let (r, f) = alu_op(AluKind::Adc, 2, 0xfffe, 1, X86_EFLAGS_CF);
        assert_eq!(r, 0);
        assert!(f & X86_EFLAGS_CF != 0 && f & X86_EFLAGS_ZF != 0);
        let (r, f) = alu_op(AluKind::Sbb, 1, 0, 0, X86_EFLAGS_CF);
        assert_eq!(r, 0xff);
        assert!(f & X86_EFLAGS_CF != 0 && f & X86_EFLAGS_SF != 0 && f & X86_EFLAGS_OF == 0);
        let (r, f) = alu_op(AluKind::Sbb, 1, 0x80, 0x7f, X86_EFLAGS_CF);
        assert_eq!(r, 0);
        assert!(f & X86_EFLAGS_OF != 0 && f & X86_EFLAGS_ZF != 0 && f & X86_EFLAGS_CF == 0);
        // and zeroes OF and CF, keeps non-arithmetic flags.
        let (r, f) = alu_op(
            AluKind::And,
            4,
            0xf0,
            0x0f,
            X86_EFLAGS_CF | X86_EFLAGS_OF | X86_EFLAGS_DF,
        );
        assert_eq!(r, 0);
        assert_eq!(f, X86_EFLAGS_ZF | X86_EFLAGS_PF | X86_EFLAGS_DF);
        let (r, f) = alu_op(AluKind::Or, 1, 0x80, 0x01, X86_EFLAGS_CF);
        assert_eq!(r, 0x81);
        assert_eq!(flags(f), X86_EFLAGS_SF | X86_EFLAGS_PF);
        let (r, f) = alu_op(AluKind::Xor, 2, 0xffff, 0x00fe, 0);
        assert_eq!(r, 0xff01);
        assert_eq!(flags(f), X86_EFLAGS_SF);
        // inc/dec keep CF.
        let (r, f) = alu_op(AluKind::Inc, 1, 0x7f, 0, X86_EFLAGS_CF);
        assert_eq!(r, 0x80);
        assert_eq!(
            flags(f),
            X86_EFLAGS_CF | X86_EFLAGS_OF | X86_EFLAGS_SF | X86_EFLAGS_AF
        );
        let (r, f) = alu_op(AluKind::Dec, 4, 0, 0, 0);
        assert_eq!(r, 0xffff_ffff);
        assert_eq!(flags(f), X86_EFLAGS_SF | X86_EFLAGS_AF | X86_EFLAGS_PF);
        // neg
        let (r, f) = alu_op(AluKind::Neg, 1, 0, 0, X86_EFLAGS_CF);
        assert_eq!(r, 0);
        assert_eq!(flags(f), X86_EFLAGS_ZF | X86_EFLAGS_PF);
        let (r, f) = alu_op(AluKind::Neg, 1, 0x80, 0, 0);
        assert_eq!(r, 0x80);
        assert_eq!(flags(f), X86_EFLAGS_CF | X86_EFLAGS_OF | X86_EFLAGS_SF);
        // not changes no flags.
        assert_eq!(alu_op(AluKind::Not, 2, 0x00ff, 0, 0x8d5), (0xff00, 0x8d5));
        // bt family: CF = old bit, offset modulo the operand width.
        assert_eq!(
            alu_op(AluKind::Bt, 4, 0x8, 35, X86_EFLAGS_ZF),
            (0x8, X86_EFLAGS_ZF | X86_EFLAGS_CF)
        );
        assert_eq!(alu_op(AluKind::Bts, 2, 0, 17, X86_EFLAGS_CF), (0x2, 0));
        assert_eq!(alu_op(AluKind::Btr, 8, u64::MAX, 63, 0).0, u64::MAX >> 1);
        assert_eq!(alu_op(AluKind::Btc, 1, 0x01, 0, 0), (0x00, X86_EFLAGS_CF));
    }

    #[test]
    fn alu_on_instructions() {
        let mut g = [0u64; 16];
        // addl $1,(%rbx) with memory 0xffffffff: writes 0, CF|ZF.
        let i = d64(&[0x83, 0x03, 0x01]);
        let (w, f) = alu(&i, &mut g, 0x2, 0xffff_ffff);
        assert_eq!(w, Some(0));
        assert_eq!(
            f,
            0x2 | X86_EFLAGS_CF | X86_EFLAGS_ZF | X86_EFLAGS_AF | X86_EFLAGS_PF
        );
        // cmpl $1,(%rbx): no write back.
        let i = d64(&[0x83, 0x3b, 0x01]);
        assert_eq!(alu(&i, &mut g, 0, 1), (None, X86_EFLAGS_ZF | X86_EFLAGS_PF));
        // sub (%rbx),%eax: the register is the destination, zero-extended.
        let i = d64(&[0x2b, 0x03]);
        g[0] = 0xffff_ffff_0000_0005;
        let (w, f) = alu(&i, &mut g, 0, 6);
        assert_eq!(w, None);
        assert_eq!(g[0], 0xffff_ffff);
        assert!(f & X86_EFLAGS_CF != 0);
        // sub %eax,(%rbx): memory is the destination, EAX unchanged.
        let i = d64(&[0x29, 0x03]);
        g[0] = 1;
        assert_eq!(alu(&i, &mut g, 0, 3).0, Some(2));
        assert_eq!(g[0], 1);
        // or %ah,(%rbx)
        let i = d64(&[0x08, 0x23]);
        g[0] = 0x8000;
        assert_eq!(alu(&i, &mut g, 0, 0x01).0, Some(0x81));
        // cmp (%rbx),%al: flags of AL - mem.
        let i = d64(&[0x3a, 0x03]);
        g[0] = 1;
        let (_, f) = alu(&i, &mut g, 0, 2);
        assert!(f & X86_EFLAGS_CF != 0);
        // test %ecx,(%rbx)
        let i = d64(&[0x85, 0x0b]);
        g[1] = 0x10;
        assert_eq!(alu(&i, &mut g, 0, 0x10), (None, 0));
        // xorw $0xffff,(%rbx)
        let i = d64(&[0x66, 0x81, 0x33, 0xff, 0xff]);
        assert_eq!(alu(&i, &mut g, 0, 0x00f0).0, Some(0xff0f));
        // a load does not touch anything.
        let i = d64(&[0x8b, 0x03]);
        assert_eq!(alu(&i, &mut g, 0x46, 5), (None, 0x46));
        // scasb: flags of AL - mem.
        let i = d64(&[0xae]);
        g[0] = 0x41;
        assert_eq!(alu(&i, &mut g, 0, 0x41).1, X86_EFLAGS_ZF | X86_EFLAGS_PF);
        // cmpsb: flags of [rsi] - [rdi].
        let i = d64(&[0xa6]);
        assert!(cmps_flags(&i, 0, 1, 2) & X86_EFLAGS_CF != 0);
    }

    #[test]
    fn bit_offset_addressing() {
        // bts %eax,(%rbx): the signed offset selects the dword.
        let i = d64(&[0x0f, 0xab, 0x03]);
        let mut g = [0u64; 16];
        g[3] = 0x1000;
        g[0] = 35;
        assert_eq!(effective_address(&i, &g, 0), 0x1004);
        assert_eq!(alu(&i, &mut g, 0, 0), (Some(0x8), 0));
        g[0] = 0xffff_ffff; // -1 as a dword: bit 31 of the dword below.
        assert_eq!(effective_address(&i, &g, 0), 0xffc);
        assert_eq!(alu(&i, &mut g, 0, 0).0, Some(0x8000_0000));
        // bt %ax,(%bx) in real mode: 16-bit words, offset -17 -> word at -4.
        let i = decode(&[0x0f, 0xa3, 0x07], Mode::Real).unwrap();
        g[0] = 0xffef;
        g[3] = 0x10;
        assert_eq!(effective_address(&i, &g, 0), 0xc);
        // btl $35,(%rbx): immediates never move the address.
        let i = d64(&[0x0f, 0xba, 0x23, 35]);
        g[3] = 0x1000;
        assert_eq!(effective_address(&i, &g, 0), 0x1000);
        assert_eq!(alu(&i, &mut g, 0, 0x8), (None, X86_EFLAGS_CF));
    }

    // ---- strings ------------------------------------------------------------------

    #[test]
    fn string_count_and_advance() {
        let mut g = [0u64; 16];
        // rep movsw, 16-bit addresses, DF=1: wraps within 16 bits, keeps the rest.
        let i = decode(&[0xf3, 0xa5], Mode::Real).unwrap();
        g[1] = 0x1_0003;
        assert_eq!(string_count(&i, &g), 3);
        g[6] = 0xdead_0001;
        g[7] = 0x0000_0010;
        string_advance(&i, &mut g, X86_EFLAGS_DF, 2);
        assert_eq!(g[6], 0xdead_fffd);
        assert_eq!(g[7], 0x0000_000c);
        assert_eq!(g[1], 0x1_0001);
        // stosl with 32-bit addresses in 64-bit mode (a32): zero-extends, RSI kept.
        let i = d64(&[0x67, 0xf3, 0xab]);
        g[1] = 0xffff_ffff_0000_0005;
        assert_eq!(string_count(&i, &g), 5);
        g[7] = 0x1234_5678_ffff_fffc;
        g[6] = 0x99;
        string_advance(&i, &mut g, 0, 2);
        assert_eq!(g[7], 0x4);
        assert_eq!(g[6], 0x99);
        assert_eq!(g[1], 3);
        // 64-bit outsb, DF=0, no REP: RSI only, RCX untouched.
        let i = d64(&[0x6e]);
        assert_eq!(string_count(&i, &g), 1);
        g[6] = 0xffff_ffff_ffff_ffff;
        string_advance(&i, &mut g, 0, 1);
        assert_eq!((g[6], g[1]), (0, 3));
        // rep insb with RCX=0 does nothing.
        let i = decode(&[0xf3, 0x6c], Mode::Real).unwrap();
        g[1] = 0x5_0000;
        assert_eq!(string_count(&i, &g), 0);
        assert!(string_done(&i, &g, 0));
        // lodsq DF=1: RSI -= 8.
        let i = d64(&[0x48, 0xad]);
        g[6] = 0x1000;
        string_advance(&i, &mut g, X86_EFLAGS_DF, 1);
        assert_eq!(g[6], 0xff8);
    }

    #[test]
    fn rep_termination() {
        let mut g = [0u64; 16];
        g[1] = 2;
        let repe_cmps = d64(&[0xf3, 0xa6]);
        assert!(!string_done(&repe_cmps, &g, X86_EFLAGS_ZF));
        assert!(string_done(&repe_cmps, &g, 0));
        let repne_scas = d64(&[0xf2, 0xae]);
        assert!(string_done(&repne_scas, &g, X86_EFLAGS_ZF));
        assert!(!string_done(&repne_scas, &g, 0));
        // ZF does not matter for MOVS, even with F2.
        let rep_movs = d64(&[0xf2, 0xa4]);
        assert!(!string_done(&rep_movs, &g, X86_EFLAGS_ZF));
        g[1] = 0;
        assert!(string_done(&rep_movs, &g, 0));
        assert!(string_done(&d64(&[0xa4]), &g, 0));
    }

    #[test]
    fn ins_read_ahead_like_pio_in_emulated() {
        let mut g = [0u64; 16];
        let rep_insb = decode(&[0xf3, 0x6c], Mode::Real).unwrap();
        // The real-mode test guest: rep insb, CX=3, DI=0x3000 -> one exit of count 3.
        g[1] = 3;
        g[7] = 0x3000;
        assert_eq!(ins_read_ahead(&rep_insb, &g, 0), 3);
        // Two bytes left in the page.
        g[1] = 5;
        g[7] = 0xffe;
        assert_eq!(ins_read_ahead(&rep_insb, &g, 0), 2);
        assert_eq!(ins_read_ahead(&rep_insb, &g, X86_EFLAGS_DF), 5);
        // DF=1 at a page start: at least one.
        g[7] = 0x2000;
        assert_eq!(ins_read_ahead(&rep_insb, &g, X86_EFLAGS_DF), 1);
        // 1024-byte buffer: 256 dwords.
        let rep_insl = d64(&[0xf3, 0x6d]);
        g[1] = 10_000;
        g[7] = 0;
        assert_eq!(ins_read_ahead(&rep_insl, &g, 0), 256);
        // Without REP: one.
        assert_eq!(ins_read_ahead(&d64(&[0x6d]), &g, 0), 1);
        g[2] = 0xffff_03f8;
        assert_eq!(io_port(&g), 0x3f8);
    }

    // ---- addresses -------------------------------------------------------------------

    #[test]
    fn linear_addresses() {
        assert_eq!(linear_address(Mode::Real, DS, 0xf_0000, 0xffff), 0xf_ffff);
        assert_eq!(
            linear_address(Mode::Prot32, DS, 0xffff_f000, 0x2000),
            0x1000
        );
        // 64-bit mode ignores ES/CS/SS/DS bases, not FS/GS.
        assert_eq!(linear_address(Mode::Prot64, DS, 0x1000, 0x10), 0x10);
        assert_eq!(linear_address(Mode::Prot64, GS, 0x1000, 0x10), 0x1010);
        assert!(is_canonical(0xffff_8000_0000_0000, false));
        assert!(!is_canonical(0x0000_8000_0000_0000, false));
        assert!(is_canonical(0x0000_8000_0000_0000, true));
        assert!(!is_canonical(0x0100_0000_0000_0000, true));
        assert_eq!(page_split(0x1ffe, 4), 2);
        assert_eq!(page_split(0x1000, 8), 8);
    }

    #[test]
    fn segment_checks() {
        let data = SegmentDesc {
            kind: 0x3,
            db: true,
            limit: 0xffff,
            usable: true,
        };
        assert!(segment_ok(Mode::Prot32, &data, 0xfffc, 4, true, false));
        assert!(!segment_ok(Mode::Prot32, &data, 0xfffd, 4, false, false));
        assert!(!segment_ok(Mode::Prot32, &data, 0x10000, 1, false, false));
        let ro = SegmentDesc { kind: 0x1, ..data };
        assert!(!segment_ok(Mode::Prot32, &ro, 0, 1, true, false));
        assert!(segment_ok(Mode::Prot32, &ro, 0, 1, false, false));
        // Code segments are not writable outside real mode; execute-only ones are
        // not readable.
        let code = SegmentDesc { kind: 0xb, ..data };
        assert!(!segment_ok(Mode::Prot32, &code, 0, 1, true, false));
        assert!(segment_ok(Mode::Real, &code, 0, 1, true, false));
        let xo = SegmentDesc { kind: 0x9, ..data };
        assert!(!segment_ok(Mode::Prot32, &xo, 0, 1, false, false));
        assert!(segment_ok(Mode::Prot32, &xo, 0, 1, false, true));
        // Expand-down: offsets at or below the limit fault.
        let down = SegmentDesc {
            kind: 0x7,
            limit: 0xfff,
            ..data
        };
        assert!(!segment_ok(Mode::Prot32, &down, 0xfff, 1, false, false));
        assert!(segment_ok(Mode::Prot32, &down, 0x1000, 4, true, false));
        let flat = SegmentDesc {
            limit: 0xffff_ffff,
            ..data
        };
        assert!(segment_ok(Mode::Prot32, &flat, 0xffff_ffff, 4, true, false));
        let unusable = SegmentDesc {
            usable: false,
            ..data
        };
        assert!(!segment_ok(Mode::Prot32, &unusable, 0, 1, false, false));
        assert!(segment_ok(Mode::Prot64, &unusable, 0, 1, false, false));
    }

    // ---- page walker -------------------------------------------------------------------
}
