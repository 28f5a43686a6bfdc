//! kvm-fuzz: random ioctl sequences and hostile guests against /dev/kvm (ours or
//! the in-tree modules), deterministic per seed, with a differential mode.
//!
//!   kvm-fuzz run --seed S [--ops N] [--threads T] [--only I,J,..] [--log FILE] [--hold F]
//!   kvm-fuzz campaign --seed S --seeds K [--ops N] [--threads T] [--logdir DIR]
//!   kvm-fuzz diff IN_TREE_LOG OURS_LOG [--known FILE]
//!   kvm-fuzz minimise --seed S --ops N (--kmsg | --line I.J --want TEXT)
//!
//! `run` logs one line per step (tests/fuzz/README.md has the format). `campaign`
//! runs seeds S..S+K in child processes and stops at the first kernel report
//! (WARNING, BUG, lockdep, ...) in /dev/kmsg, printing the seed to replay.
//! `diff` compares two logs of the same seed line by line and prints the
//! divergences per ioctl; it fails on any that `--known` does not document.
//! `minimise` shrinks a sequence (ddmin over its operations) to the ones a kernel
//! report, or one log line's result, still needs.

#[path = "../report.rs"]
#[allow(dead_code)]
mod report;

mod diff;
mod exec;
mod guest;
mod race;
mod rng;
mod table;

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::process::{Command, ExitCode};

use exec::Fuzzer;

struct Opts {
    seed: u64,
    seeds: u64,
    ops: u64,
    threads: usize,
    only: Option<BTreeSet<u64>>,
    log: Option<String>,
    hold: Option<String>,
    logdir: Option<String>,
    known: Option<String>,
    kmsg: bool,
    line: Option<String>,
    want: Option<String>,
    rest: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        seed: 1,
        seeds: 1,
        ops: 2000,
        threads: 0,
        only: None,
        log: None,
        hold: None,
        logdir: None,
        known: None,
        kmsg: false,
        line: None,
        want: None,
        rest: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let num = |s: String| s.parse::<u64>().map_err(|e| format!("{s}: {e}"));
        match a.as_str() {
            "--seed" => o.seed = num(val()?)?,
            "--seeds" => o.seeds = num(val()?)?,
            "--ops" => o.ops = num(val()?)?,
            "--threads" => o.threads = num(val()?)? as usize,
            "--only" => {
                let v = val()?;
                let set: Result<BTreeSet<u64>, String> = v
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| num(s.to_string()))
                    .collect();
                o.only = Some(set?);
            }
            "--log" => o.log = Some(val()?),
            "--hold" => o.hold = Some(val()?),
            "--logdir" => o.logdir = Some(val()?),
            "--known" => o.known = Some(val()?),
            "--kmsg" => o.kmsg = true,
            "--line" => o.line = Some(val()?),
            "--want" => o.want = Some(val()?),
            _ => o.rest.push(a.clone()),
        }
    }
    Ok(o)
}

/// One seed's sequence in this process.
fn run(o: &Opts) -> Result<(), String> {
    let log: Box<dyn Write> = match &o.log {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{p}: {e}"))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    guest::install_kick();
    let mut f = Fuzzer::new(o.seed, log)?;
    let race = if o.threads > 0 {
        f.racy = true;
        Some(race::Race::start(
            o.threads,
            o.seed,
            f.chunks[exec::CHUNKS - 1].addr,
        ))
    } else {
        None
    };
    for i in 0..o.ops {
        if o.only.as_ref().is_some_and(|s| !s.contains(&i)) {
            continue;
        }
        f.op(i);
        if let Some(r) = &race {
            let (vms, vcpus) = f.live_fds();
            r.publish(vms, vcpus);
        }
        // Every step on disk before the next: a crash must not eat the last ones.
        f.flush();
    }
    let raced = race.map(|r| r.stop()).unwrap_or(0);
    if let Some(h) = &o.hold {
        // Keep every VM open until the file we create is removed (load-cycles.sh
        // tries rmmod meanwhile).
        std::fs::write(h, b"").map_err(|e| format!("{h}: {e}"))?;
        while std::path::Path::new(h).exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    f.flush();
    eprintln!(
        "kvm-fuzz seed {}: {} ops, {} ioctls (+{raced} from racing threads), {} guests, {} KVM_RUNs",
        o.seed, o.ops, f.ioctls, f.guest_runs, f.kvm_runs
    );
    Ok(())
}

/// Kernel log lines that mean the host is not fine.
const BAD: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection fault",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "suspicious RCU usage",
    "lockdep",
    "INFO: task",
    "UBSAN",
    "kernel BUG",
    "Call Trace",
    "rust_panic",
    "panicked at",
];

/// /dev/kmsg from its current end; `new_reports` returns what was logged since.
struct Kmsg(i32);

impl Kmsg {
    fn open() -> Kmsg {
        // SAFETY: opening a constant path.
        let fd = unsafe { libc::open(c"/dev/kmsg".as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        if fd >= 0 {
            // SAFETY: seeking our own fd to the end of the ring.
            unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        }
        Kmsg(fd)
    }

    fn new_reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reading one record into a local buffer.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                if report::errno() == libc::EPIPE {
                    continue; // overwritten records: go on with the next
                }
                break;
            }
            if n == 0 {
                break;
            }
            let rec = String::from_utf8_lossy(&buf[..n as usize]).to_string();
            let msg = rec.split_once(';').map(|(_, m)| m).unwrap_or(&rec);
            if BAD.iter().any(|b| msg.contains(b)) {
                out.push(msg.trim_end().to_string());
            }
        }
        out
    }
}

impl Drop for Kmsg {
    fn drop(&mut self) {
        exec::close(self.0);
    }
}

fn child(o: &Opts, seed: u64, only: Option<&BTreeSet<u64>>, log: &str) -> Result<bool, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut c = Command::new(me);
    c.args([
        "run",
        "--seed",
        &seed.to_string(),
        "--ops",
        &o.ops.to_string(),
        "--log",
        log,
    ]);
    c.args(["--threads", &o.threads.to_string()]);
    if let Some(s) = only {
        let l: Vec<String> = s.iter().map(|i| i.to_string()).collect();
        c.args(["--only", &l.join(",")]);
    }
    let st = c.status().map_err(|e| e.to_string())?;
    Ok(st.success())
}

fn campaign(o: &Opts) -> Result<bool, String> {
    let dir = o.logdir.clone().unwrap_or_else(|| "/tmp/kvm-fuzz".into());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let k = Kmsg::open();
    let mut failed = 0;
    for s in o.seed..o.seed + o.seeds {
        let log = format!("{dir}/seed-{s}.log");
        let ok = child(o, s, None, &log)?;
        let reports = k.new_reports();
        if !reports.is_empty() {
            for r in reports.iter().take(40) {
                println!("# kernel: {r}");
            }
            println!(
                "kvm-fuzz: seed {s} left a kernel report; replay: kvm-fuzz run --seed {s} --ops {} --threads {}",
                o.ops, o.threads
            );
            return Ok(false);
        }
        if !ok {
            failed += 1;
            println!("kvm-fuzz: seed {s}: the fuzzer itself failed (see {log})");
        } else if o.threads == 0 {
            // Only the last seed's log is kept: the campaign is about the kernel.
            if s + 1 < o.seed + o.seeds {
                let _ = std::fs::remove_file(&log);
            }
        }
    }
    Ok(failed == 0)
}

/// ddmin over operation indices: the smallest set (1-minimal) that still makes
/// `test` true.
fn ddmin(mut set: Vec<u64>, test: &mut dyn FnMut(&[u64]) -> bool) -> Vec<u64> {
    let mut n = 2;
    while set.len() >= 2 {
        let chunk = set.len().div_ceil(n);
        let mut reduced = false;
        for start in (0..set.len()).step_by(chunk) {
            let rest: Vec<u64> = set
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < start || *i >= start + chunk)
                .map(|(_, v)| *v)
                .collect();
            if test(&rest) {
                set = rest;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= set.len() {
                break;
            }
            n = (n * 2).min(set.len());
        }
    }
    set
}

fn minimise(o: &Opts) -> Result<bool, String> {
    let log = "/tmp/kvm-fuzz-min.log".to_string();
    let mut tries = 0;
    let mut test = |ops: &[u64]| -> bool {
        tries += 1;
        let only: BTreeSet<u64> = ops.iter().copied().collect();
        if o.kmsg {
            let k = Kmsg::open();
            let _ = child(o, o.seed, Some(&only), &log);
            !k.new_reports().is_empty()
        } else {
            let _ = child(o, o.seed, Some(&only), &log);
            let (Some(line), Some(want)) = (&o.line, &o.want) else {
                return false;
            };
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .any(|l| l.starts_with(&format!("{line} ")) && l.contains(want.as_str()))
        }
    };
    let all: Vec<u64> = (0..o.ops).collect();
    if !test(&all) {
        println!(
            "kvm-fuzz: seed {} does not show it with {} ops",
            o.seed, o.ops
        );
        return Ok(false);
    }
    let min = ddmin(all, &mut test);
    let l: Vec<String> = min.iter().map(|i| i.to_string()).collect();
    println!(
        "kvm-fuzz: minimal ({} ops, {tries} runs): kvm-fuzz run --seed {} --ops {} --only {}",
        min.len(),
        o.seed,
        o.ops,
        l.join(",")
    );
    Ok(true)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: kvm-fuzz run|campaign|diff|minimise ... (see the source's header)");
        return ExitCode::from(2);
    };
    let o = match parse(&args[1..]) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kvm-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd.as_str() {
        "run" => run(&o).map(|_| true),
        "campaign" => campaign(&o),
        "diff" => match o.rest.as_slice() {
            [a, b] => diff::diff(a, b, o.known.as_deref()),
            _ => Err("diff needs two logs".into()),
        },
        "minimise" | "minimize" => minimise(&o),
        _ => Err(format!("unknown command {cmd}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kvm-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddmin_finds_the_needed_pair() {
        let all: Vec<u64> = (0..100).collect();
        let got = ddmin(all, &mut |s: &[u64]| s.contains(&17) && s.contains(&80));
        assert_eq!(got, vec![17, 80]);
    }
}
