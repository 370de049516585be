//! Classic BPF drop programs for tc's `bpf` classifier in direct-action mode.
//!
//! The test kernels we target lack `sch_prio`, `cls_u32` and `act_gact` (so the textbook
//! `u32 match ip dst X action drop` is unavailable), but have `clsact` and `cls_bpf`. `cls_bpf`
//! accepts classic BPF as inline `bytecode`, and with `da` (direct action) the program's return
//! value is the tc verdict: `TC_ACT_SHOT` (2) drops, `TC_ACT_UNSPEC` (-1) lets the packet on.
//! No object files, compilers or libbpf are needed.
//!
//! At both clsact hooks the frame starts at the Ethernet header, so the EtherType is at byte 12,
//! the IPv4 source address at byte 26 and the destination at byte 30 (no VLAN tags on our veths).

use std::net::Ipv4Addr;

/// Which IPv4 address of a frame the program matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// Source address (offset 26).
    Src,
    /// Destination address (offset 30).
    Dst,
}

impl Field {
    fn offset(self) -> u32 {
        match self {
            Field::Src => 14 + 12,
            Field::Dst => 14 + 16,
        }
    }
}

const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LDW_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const ETH_P_IP: u32 = 0x0800;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
const TC_ACT_SHOT: u32 = 2;

/// Largest address set one program handles (jump offsets are 8 bits).
pub(crate) const MAX_ADDRS: usize = 250;

/// One classic BPF instruction: `code jt jf k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub(crate) code: u16,
    pub(crate) jt: u8,
    pub(crate) jf: u8,
    pub(crate) k: u32,
}

/// A program dropping IPv4 frames whose `field` is one of `addrs`; everything else (ARP, IPv6,
/// other IPv4) passes. Returns `None` when `addrs` is empty or too large.
pub(crate) fn drop_program(field: Field, addrs: &[Ipv4Addr]) -> Option<Vec<Insn>> {
    let n = addrs.len();
    if n == 0 || n > MAX_ADDRS {
        return None;
    }
    let n8 = u8::try_from(n).ok()?;
    let mut prog = Vec::with_capacity(n + 5);
    // 0: A = ethertype; 1: if not IPv4 jump to "pass" (at index 3 + n).
    prog.push(insn(LDH_ABS, 0, 0, 12));
    prog.push(insn(JEQ_K, 0, n8 + 1, ETH_P_IP));
    // 2: A = address; 3..3+n: on match jump to "drop" (at index 4 + n).
    prog.push(insn(LDW_ABS, 0, 0, field.offset()));
    for (k, addr) in addrs.iter().enumerate() {
        let to_drop = n8 - u8::try_from(k).ok()?;
        prog.push(insn(JEQ_K, to_drop, 0, u32::from(*addr)));
    }
    prog.push(insn(RET_K, 0, 0, TC_ACT_UNSPEC));
    prog.push(insn(RET_K, 0, 0, TC_ACT_SHOT));
    Some(prog)
}

/// The program in the `tc ... bpf bytecode` syntax: `len,code jt jf k,...`.
pub(crate) fn to_tc_bytecode(prog: &[Insn]) -> String {
    let mut out = prog.len().to_string();
    for i in prog {
        out.push_str(&format!(",{} {} {} {}", i.code, i.jt, i.jf, i.k));
    }
    out
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interprets the subset of classic BPF that [`drop_program`] emits.
    fn run(prog: &[Insn], frame: &[u8]) -> u32 {
        let mut pc = 0usize;
        let mut a = 0u32;
        loop {
            let i = prog[pc];
            match i.code {
                LDH_ABS => {
                    let o = i.k as usize;
                    a = u32::from(u16::from_be_bytes([frame[o], frame[o + 1]]));
                    pc += 1;
                }
                LDW_ABS => {
                    let o = i.k as usize;
                    a = u32::from_be_bytes([frame[o], frame[o + 1], frame[o + 2], frame[o + 3]]);
                    pc += 1;
                }
                JEQ_K => pc += 1 + usize::from(if a == i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("unexpected opcode {other}"),
            }
        }
    }

    fn frame(ethertype: u16, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        f[26..30].copy_from_slice(&src.octets());
        f[30..34].copy_from_slice(&dst.octets());
        f
    }

    #[test]
    fn drops_listed_addresses_only() {
        let a = Ipv4Addr::new(198, 18, 3, 1);
        let b = Ipv4Addr::new(198, 18, 3, 2);
        let c = Ipv4Addr::new(198, 18, 3, 3);
        let prog = drop_program(Field::Dst, &[a, c]).expect("program");
        assert_eq!(run(&prog, &frame(0x0800, b, a)), TC_ACT_SHOT);
        assert_eq!(run(&prog, &frame(0x0800, b, c)), TC_ACT_SHOT);
        assert_eq!(run(&prog, &frame(0x0800, a, b)), TC_ACT_UNSPEC);
        assert_eq!(run(&prog, &frame(0x0806, b, a)), TC_ACT_UNSPEC, "ARP passes");

        let prog = drop_program(Field::Src, &[b]).expect("program");
        assert_eq!(run(&prog, &frame(0x0800, b, a)), TC_ACT_SHOT);
        assert_eq!(run(&prog, &frame(0x0800, a, b)), TC_ACT_UNSPEC);
    }

    #[test]
    fn large_sets_keep_jumps_in_range() {
        let addrs: Vec<Ipv4Addr> = (1..=MAX_ADDRS as u8).map(|i| Ipv4Addr::new(198, 19, 0, i)).collect();
        let prog = drop_program(Field::Src, &addrs).expect("program");
        for addr in &addrs {
            assert_eq!(run(&prog, &frame(0x0800, *addr, addrs[0])), TC_ACT_SHOT);
        }
        let other = Ipv4Addr::new(198, 19, 0, 254);
        assert_eq!(run(&prog, &frame(0x0800, other, addrs[0])), TC_ACT_UNSPEC);
        assert!(drop_program(Field::Src, &[]).is_none());
    }

    #[test]
    fn tc_syntax() {
        let prog = drop_program(Field::Src, &[Ipv4Addr::new(198, 18, 250, 254)]).expect("program");
        assert_eq!(
            to_tc_bytecode(&prog),
            "6,40 0 0 12,21 0 2 2048,32 0 0 26,21 1 0 3323132670,6 0 0 4294967295,6 0 0 2"
        );
    }
}
