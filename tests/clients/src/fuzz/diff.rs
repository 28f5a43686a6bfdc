//! The differential check: two logs of one seed, in-tree's and ours, compared
//! line by line. A line differs when its result (or the state hash) differs, or
//! when one side took a step the other did not (the sequences went apart there).
//! Lines either side marks `~` (timing-dependent) are not compared.
//!
//! `--known FILE` documents accepted divergences, one per line:
//! `NAME<TAB>SUBSTRING<TAB>why` — a divergence of ioctl NAME whose in-tree line
//! contains SUBSTRING (`*`: any) is documented.

use std::collections::{BTreeMap, HashMap};
use std::fs;

struct Line<'a> {
    target: &'a str,
    name: &'a str,
    text: &'a str,
}

/// The VM slot a log target belongs to (`vm1`, `vcpu1.2` -> 1).
fn vm_of(target: &str) -> Option<u32> {
    let t = target
        .strip_prefix("vcpu")
        .or_else(|| target.strip_prefix("vm"))?;
    t.split('.').next()?.parse().ok()
}

fn parse(text: &str) -> (Vec<&str>, HashMap<&str, Line<'_>>) {
    let mut order = Vec::new();
    let mut map = HashMap::new();
    for l in text.lines() {
        let mut it = l.splitn(4, ' ');
        let (Some(key), Some(target), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !key.contains('.') || !key.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        order.push(key);
        map.insert(
            key,
            Line {
                target,
                name,
                text: l,
            },
        );
    }
    (order, map)
}

fn nondet(l: &str) -> bool {
    l.contains(" = ~") || l.contains(" #~")
}

struct Known {
    name: String,
    pat: String,
    why: String,
}

fn known(path: Option<&str>) -> Result<Vec<Known>, String> {
    let Some(p) = path else { return Ok(Vec::new()) };
    let t = fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?;
    Ok(t.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some(Known {
                name: f.next()?.to_string(),
                pat: f.next()?.to_string(),
                why: f.next().unwrap_or("").to_string(),
            })
        })
        .collect())
}

#[derive(Default)]
struct Row {
    count: u64,
    first_a: String,
    first_b: String,
    why: Option<String>,
}

pub fn diff(a: &str, b: &str, known_path: Option<&str>) -> Result<bool, String> {
    let ta = fs::read_to_string(a).map_err(|e| format!("{a}: {e}"))?;
    let tb = fs::read_to_string(b).map_err(|e| format!("{b}: {e}"))?;
    let (order, la) = parse(&ta);
    let (_, lb) = parse(&tb);
    let known = known(known_path)?;
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let (mut compared, mut skipped, mut after) = (0u64, 0u64, 0u64);
    // VM slots whose state already differs: what follows on them until the slot
    // gets a new VM is a consequence, not a new divergence.
    let mut apart = std::collections::HashSet::new();
    for key in &order {
        let x = &la[key];
        let y = lb.get(key);
        if x.name == "CREATE_VM" {
            // `kvm CREATE_VM vmK ...`: a fresh VM in slot K on both sides.
            if let Some(k) = x.text.split(' ').nth(3).and_then(vm_of) {
                if y.is_some_and(|y| y.text == x.text) {
                    apart.remove(&k);
                }
            }
        }
        let vm = vm_of(x.target);
        if vm.is_some_and(|k| apart.contains(&k)) {
            after += 1;
            continue;
        }
        if nondet(x.text) || y.is_some_and(|y| nondet(y.text)) {
            skipped += 1;
            continue;
        }
        compared += 1;
        let same = y.is_some_and(|y| y.text == x.text);
        if same {
            continue;
        }
        if let Some(k) = vm {
            apart.insert(k);
        }
        let name = x.name.to_string();
        let why = known
            .iter()
            .find(|k| k.name == name && (k.pat == "*" || x.text.contains(k.pat.as_str())))
            .map(|k| k.why.clone());
        let row = rows
            .entry(format!(
                "{name}{}",
                if why.is_some() { "" } else { " (undocumented)" }
            ))
            .or_default();
        if row.count == 0 {
            row.first_a = x.text.to_string();
            row.first_b = y
                .map(|y| y.text.to_string())
                .unwrap_or_else(|| "(no such step)".into());
            row.why = why;
        }
        row.count += 1;
    }
    // Steps only ours took (where the sequences had not already gone apart).
    for (key, y) in &lb {
        if !la.contains_key(key) && !nondet(y.text) && vm_of(y.target).is_none() {
            let row = rows.entry(format!("{} (only ours)", y.name)).or_default();
            if row.count == 0 {
                row.first_a = "(no such step)".into();
                row.first_b = y.text.to_string();
            }
            row.count += 1;
        }
    }
    println!(
        "# differential: {compared} steps compared, {skipped} timing-dependent and {after} on VMs already apart skipped"
    );
    println!("| ioctl | divergent steps | in-tree (first) | ours (first) | documented |");
    println!("| --- | --- | --- | --- | --- |");
    let mut bad = 0;
    for (name, r) in &rows {
        if r.why.is_none() {
            bad += 1;
        }
        println!(
            "| {name} | {} | `{}` | `{}` | {} |",
            r.count,
            r.first_a,
            r.first_b,
            r.why.as_deref().unwrap_or("NO")
        );
    }
    println!("# {} rows, {bad} undocumented", rows.len());
    Ok(bad == 0)
}
