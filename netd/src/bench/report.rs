//! `netd bench`'s report: report.json (every round's raw figures, the
//! machine, the placements, the peers, the programs' sizes, the targets),
//! report.md (the targets with their measured values first, then one table
//! per CPU placement, the lead one first, with medians, min-max and ratios
//! with their noise) and SVG charts.
use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Opts, Placement, Sample, num_cpus};

/// What the run adds to the samples.
pub(super) struct Run {
    pub peers: Vec<String>,
    /// Placements or peers left out, and why.
    pub notes: Vec<String>,
    /// The eBPF programs as the ebpf daemon reported them (`/stats`).
    pub programs: Value,
    /// /proc/loadavg at the start and at the end.
    pub loadavg: (String, String),
}

/// Median and range of one figure's rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Option<Stat> {
        if v.is_empty() {
            return None;
        }
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn cell(&self) -> String {
        format!("{} ({}-{})", fmt(self.median), fmt(self.min), fmt(self.max))
    }
}

/// A ratio of medians with its noise: the lowest and highest ratio the
/// rounds allow (min/max .. max/min), and whether the two ranges overlap
/// (then the difference is within the noise).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Ratio {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub within_noise: bool,
}

impl Ratio {
    pub fn of(a: &Stat, b: &Stat) -> Option<Ratio> {
        if b.median == 0.0 || b.min == 0.0 || b.max == 0.0 {
            return None;
        }
        Some(Ratio {
            value: a.median / b.median,
            low: a.min / b.max,
            high: a.max / b.min,
            within_noise: a.min <= b.max && b.min <= a.max,
        })
    }

    fn cell(&self) -> String {
        format!(
            "{:.2}x ({:.2}-{:.2}){}",
            self.value,
            self.low,
            self.high,
            if self.within_noise {
                " within noise"
            } else {
                ""
            }
        )
    }
}

type Key = (String, String, String, String);

/// (placement, scenario, load, figure) -> column -> rounds.
fn group(samples: &[Sample]) -> BTreeMap<Key, BTreeMap<String, Vec<f64>>> {
    let mut by: BTreeMap<Key, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for s in samples {
        for (f, v) in &s.figures {
            by.entry((
                s.placement.clone(),
                s.scenario.clone(),
                s.load.clone(),
                f.clone(),
            ))
            .or_default()
            .entry(s.datapath.clone())
            .or_default()
            .push(*v);
        }
    }
    by
}

/// One target of the performance issue, measured.
#[derive(serde::Serialize)]
struct Target {
    what: String,
    goal: String,
    measured: String,
    /// `met`, `missed`, or `not measured`.
    verdict: String,
    within_noise: bool,
}

struct Targets<'a> {
    by: &'a BTreeMap<Key, BTreeMap<String, Vec<f64>>>,
    placement: String,
    out: Vec<Target>,
}

impl Targets<'_> {
    fn stat(
        &self,
        placement: &str,
        scenario: &str,
        load: &str,
        figure: &str,
        col: &str,
    ) -> Option<Stat> {
        self.by
            .get(&(
                placement.into(),
                scenario.into(),
                load.into(),
                figure.into(),
            ))
            .and_then(|m| m.get(col))
            .and_then(|v| Stat::of(v))
    }

    fn push(&mut self, what: &str, goal: &str, measured: Option<(String, bool, bool)>) {
        let (measured, verdict, within_noise) = match measured {
            Some((m, met, noise)) => (m, if met { "met" } else { "missed" }, noise),
            None => ("-".to_string(), "not measured", false),
        };
        self.out.push(Target {
            what: what.into(),
            goal: goal.into(),
            measured,
            verdict: verdict.into(),
            within_noise,
        });
    }

    /// `a/b` of one figure (`load`, `figure`) in the lead placement, `a`
    /// and `b` as (scenario, column); at least `min` (or at most `max`).
    fn ratio(
        &mut self,
        what: &str,
        (load, figure): (&str, &str),
        a: (&str, &str),
        b: (&str, &str),
        min: Option<f64>,
        max: Option<f64>,
    ) {
        let p = self.placement.clone();
        let r = self
            .stat(&p, a.0, load, figure, a.1)
            .zip(self.stat(&p, b.0, load, figure, b.1))
            .and_then(|(x, y)| Ratio::of(&x, &y));
        let goal = match (min, max) {
            (Some(m), _) => format!(">= {m:.2}x"),
            (_, Some(m)) => format!("<= {m:.2}x"),
            _ => String::new(),
        };
        let measured = r.map(|r| {
            let met = min.is_none_or(|m| r.value >= m) && max.is_none_or(|m| r.value <= m);
            (r.cell(), met, r.within_noise)
        });
        self.push(what, &goal, measured);
    }

    /// A plain figure, at most `max`.
    fn at_most(
        &mut self,
        what: &str,
        key: (&str, &str, &str, &str),
        col: &str,
        max: f64,
        unit: &str,
    ) {
        let s = self.stat(key.0, key.1, key.2, key.3, col);
        let measured = s.map(|s| {
            (
                format!("{} {unit} ({}-{})", fmt(s.median), fmt(s.min), fmt(s.max)),
                s.median <= max,
                false,
            )
        });
        self.push(what, &format!("<= {} {unit}", fmt(max)), measured);
    }
}

/// The targets, in the lead placement (`same` when measured).
fn targets(
    by: &BTreeMap<Key, BTreeMap<String, Vec<f64>>>,
    lead: Placement,
    ports: &[u32],
) -> Vec<Target> {
    let mut t = Targets {
        by,
        placement: lead.name().into(),
        out: Vec::new(),
    };
    let rr = ("TCP_RR", "per_sec");
    let crr = ("TCP_CRR", "per_sec");
    t.ratio(
        "c2c TCP_RR, ebpf / bare veth",
        rr,
        ("c2c", "ebpf"),
        ("c2c", "floor"),
        Some(0.97),
        None,
    );
    t.ratio(
        "c2c TCP_RR, ebpf / iptables",
        rr,
        ("c2c", "ebpf"),
        ("c2c", "iptables"),
        Some(1.25),
        None,
    );
    t.ratio(
        "published port TCP_CRR, ebpf / iptables",
        crr,
        ("dnat", "ebpf"),
        ("dnat", "iptables"),
        Some(1.25),
        None,
    );
    let most = ports.iter().copied().max().unwrap_or(0);
    if most > 0 {
        let with = format!("scaling_{most}");
        t.ratio(
            &format!("published port TCP_CRR, ebpf, {most} other ports / none"),
            crr,
            (&with, "ebpf"),
            ("scaling_0", "ebpf"),
            Some(0.95),
            None,
        );
    }
    t.ratio(
        "egress TCP_CRR, ebpf / iptables",
        crr,
        ("egress", "ebpf"),
        ("egress", "iptables"),
        Some(1.15),
        None,
    );
    t.ratio(
        "c2c TCP_STREAM, ebpf / bare veth",
        ("TCP_STREAM", "gbit_per_sec"),
        ("c2c", "ebpf"),
        ("c2c", "floor"),
        Some(0.95),
        None,
    );
    let lp = lead.name();
    t.at_most(
        "program cost, c2c (from_container, TCP_RR, ns/packet)",
        (lp, "bpf_c2c", "TCP_RR", "from_container_ns_per_packet"),
        "ebpf",
        150.0,
        "ns",
    );
    t.at_most(
        "program cost, DNAT (from_world, published-port TCP_RR, ns/packet)",
        (lp, "bpf_dnat", "TCP_RR", "from_world_ns_per_packet"),
        "ebpf",
        200.0,
        "ns",
    );
    t.at_most(
        "program cost, masquerade (from_container, egress TCP_RR, ns/packet)",
        (lp, "bpf_egress", "TCP_RR", "from_container_ns_per_packet"),
        "ebpf",
        250.0,
        "ns",
    );
    t.ratio(
        "c2c TCP_RR, ebpf / Docker",
        rr,
        ("c2c", "ebpf"),
        ("c2c", "docker"),
        Some(1.3),
        None,
    );
    t.ratio(
        "published port TCP_CRR, ebpf / Docker",
        crr,
        ("dnat", "ebpf"),
        ("dnat", "docker"),
        Some(1.3),
        None,
    );
    // The control plane: no placement.
    let control = |t: &Targets, f: &str, col: &str| t.stat("-", "control", "control", f, col);
    let created = by
        .keys()
        .find(|k| k.1 == "control" && k.3.starts_with("create_") && k.3.ends_with("_containers_ms"))
        .map(|k| k.3.clone());
    match created {
        Some(f) => {
            let r = control(&t, &f, "ebpf")
                .zip(control(&t, &f, "iptables"))
                .map(|(a, b)| (fmt(a.median), fmt(b.median), a.median <= b.median));
            let n = f
                .trim_start_matches("create_")
                .trim_end_matches("_containers_ms");
            t.push(
                &format!("creating {n} containers, ebpf vs iptables"),
                "ebpf <= iptables",
                r.map(|(a, b, met)| (format!("{a} ms vs {b} ms"), met, false)),
            );
        }
        None => t.push(
            "creating 100 containers, ebpf vs iptables",
            "ebpf <= iptables",
            None,
        ),
    }
    t.at_most(
        "publishing one port with 10,000 present, the datapath's share",
        ("-", "control", "control", "add_one_port_datapath_ms"),
        "ebpf",
        1.0,
        "ms",
    );
    // The pass's wall time decides; its CPU time is shown beside it (on a
    // busy machine the thread also waits for a CPU).
    let entries = control(&t, "gc_entries", "ebpf").map(|s| s.median as u64);
    let wall = control(&t, "gc_pass_ms", "ebpf");
    let cpu = control(&t, "gc_pass_cpu_ms", "ebpf");
    t.push(
        &format!(
            "conntrack GC pass over {} entries",
            entries.map_or("262,144".to_string(), |n| n.to_string())
        ),
        "<= 100 ms",
        wall.map(|w| {
            (
                format!(
                    "{} ms wall, {} ms CPU",
                    fmt(w.median),
                    cpu.map_or("-".into(), |c| fmt(c.median))
                ),
                w.median <= 100.0,
                false,
            )
        }),
    );
    t.out
}

/// One load of the `xdp` scenario: ebpf's published-port figure without
/// and with the no-op XDP program on the uplink.
struct XdpRow {
    load: String,
    figure: String,
    tc: Stat,
    xdp: Stat,
}

impl XdpRow {
    /// For a rate: the time each transaction gained with XDP (medians).
    fn added_us(&self) -> Option<f64> {
        (self.figure == "per_sec" && self.tc.median > 0.0 && self.xdp.median > 0.0)
            .then(|| 1e6 / self.xdp.median - 1e6 / self.tc.median)
    }
}

fn xdp_rows(by: &BTreeMap<Key, BTreeMap<String, Vec<f64>>>, lead: Placement) -> Vec<XdpRow> {
    let mut out = Vec::new();
    for (load, figure) in [
        ("TCP_CRR", "per_sec"),
        ("TCP_RR", "per_sec"),
        ("TCP_STREAM", "gbit_per_sec"),
    ] {
        let stat = |scenario: &str| {
            by.get(&(
                lead.name().to_string(),
                scenario.to_string(),
                load.to_string(),
                figure.to_string(),
            ))
            .and_then(|m| m.get("ebpf"))
            .and_then(|v| Stat::of(v))
        };
        if let (Some(tc), Some(xdp)) = (stat("uplink_tc"), stat("uplink_xdp")) {
            out.push(XdpRow {
                load: load.into(),
                figure: figure.into(),
                tc,
                xdp,
            });
        }
    }
    out
}

/// Writes report.json, report.md and the SVG charts; returns the markdown.
pub(super) fn write(o: &Opts, run: &Run, samples: &[Sample]) -> Result<String> {
    let by = group(samples);
    let lead = o.cpus[0];
    let mut cols: Vec<String> = o.datapaths.clone();
    cols.extend(run.peers.iter().cloned());
    if samples.iter().any(|s| s.datapath == "floor") {
        cols.push("floor".into());
    }
    let cmd: Vec<String> = std::env::args().collect();
    let machine = machine();
    let targets = targets(&by, lead, &o.ports);

    let mut md = format!(
        "# netd bench\n\n`{}`\n\nMachine: {} ({} cores), kernel {}; load average {} at the start, {} at the end. {} round(s) of {} s per figure, every target measured in alternating rounds; medians with min-max; rates per second, latencies in microseconds. A ratio compares medians and shows, in parentheses, the lowest and highest ratio the rounds allow; \"within noise\" marks a ratio whose two ranges overlap.\n",
        cmd.join(" "),
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or(""),
        run.loadavg.0,
        run.loadavg.1,
        o.rounds,
        o.duration
    );
    md.push_str(&format!(
        "\nCPU placements, in this order: {}. The report leads with `{}`: {}. That is where the datapath's own cost shows; in `cross` each transaction also pays two cross-CPU wake-ups, which on a VM cost more than any datapath and make every path look alike.\n",
        o.cpus
            .iter()
            .map(|p| format!("`{}` ({})", p.name(), p.describe()))
            .collect::<Vec<_>>()
            .join("; "),
        lead.name(),
        lead.describe()
    ));
    if !run.peers.is_empty() {
        md.push_str(&format!(
            "\nPeers: {} (each in a topology of its own, same loads, same rounds).\n",
            run.peers.join(", ")
        ));
    }
    for n in &run.notes {
        md.push_str(&format!("\nNote: {n}.\n"));
    }

    md.push_str(&format!(
        "\n## Targets (`{}` placement)\n\n| target | goal | measured | |\n|---|---|---|---|\n",
        lead.name()
    ));
    for t in &targets {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.what, t.goal, t.measured, t.verdict
        ));
    }

    let xdp = xdp_rows(&by, lead);
    if !xdp.is_empty() {
        md.push_str(&format!(
            "\n## XDP on the uplink (`{}` placement)\n\nThe published-port loads on ebpf with a no-op XDP program (`xdp_pass`, native mode) on the host's uplink, against the same without it, in alternating rounds: what XDP on that interface costs before any program does any work, the least an XDP variant of `from_world` would add. It can only win where what it saves of `from_world`'s TC run (`bpf_dnat` in the tables below) exceeds the time added per transaction here.\n\n| load | figure | TC only | TC + no-op XDP | XDP/TC | added per transaction |\n|---|---|---|---|---|---|\n",
            lead.name()
        ));
        for r in &xdp {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r.load,
                r.figure,
                r.tc.cell(),
                r.xdp.cell(),
                Ratio::of(&r.xdp, &r.tc).map_or("-".into(), |x| x.cell()),
                r.added_us()
                    .map_or("-".into(), |us| format!("{} µs", fmt(us))),
            ));
        }
    }

    if let Some(progs) = run.programs.as_array().filter(|p| !p.is_empty()) {
        md.push_str("\n## eBPF programs (as the kernel has them)\n\n| program | instructions | verified instructions | JITed bytes |\n|---|---|---|---|\n");
        for p in progs {
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                p["Name"].as_str().unwrap_or(""),
                p["Insns"],
                p["VerifiedInsns"],
                p["JitedBytes"]
            ));
        }
    }

    // Ratio columns: every netd datapath against iptables and the floor,
    // ebpf (else the first datapath) against each peer, Docker on netd
    // against Docker.
    let mut ratios: Vec<(String, String)> = Vec::new();
    for c in &o.datapaths {
        if c != "iptables" && o.datapaths.iter().any(|d| d == "iptables") {
            ratios.push((c.clone(), "iptables".into()));
        }
        if cols.iter().any(|x| x == "floor") {
            ratios.push((c.clone(), "floor".into()));
        }
    }
    let main = if o.datapaths.iter().any(|d| d == "ebpf") {
        "ebpf".to_string()
    } else {
        o.datapaths.first().cloned().unwrap_or_default()
    };
    for p in run.peers.iter().filter(|p| !p.contains('+')) {
        ratios.push((main.clone(), p.clone()));
    }
    if run.peers.iter().any(|p| p == "docker") {
        for p in run.peers.iter().filter(|p| p.starts_with("docker+")) {
            ratios.push((p.clone(), "docker".into()));
        }
    }

    let mut placements: Vec<String> = o.cpus.iter().map(|p| p.name().to_string()).collect();
    placements.push("-".into());
    let mut medians: BTreeMap<Key, BTreeMap<String, f64>> = BTreeMap::new();
    for pl in &placements {
        let rows: Vec<(&Key, &BTreeMap<String, Vec<f64>>)> =
            by.iter().filter(|(k, _)| &k.0 == pl).collect();
        if rows.is_empty() {
            continue;
        }
        if pl == "-" {
            md.push_str("\n## Control plane (milliseconds, KiB)\n\n");
        } else {
            let p: Placement = pl.parse()?;
            md.push_str(&format!("\n## `{pl}`: {}\n\n", p.describe()));
        }
        md.push_str("| scenario | load | figure |");
        for c in &cols {
            md.push_str(&format!(" {c} |"));
        }
        for (a, b) in &ratios {
            md.push_str(&format!(" {a}/{b} |"));
        }
        md.push('\n');
        md.push_str(&"|---".repeat(3 + cols.len() + ratios.len()));
        md.push_str("|\n");
        for (k, per) in rows {
            md.push_str(&format!("| {} | {} | {} |", k.1, k.2, k.3));
            let stats: BTreeMap<&String, Stat> = per
                .iter()
                .filter_map(|(c, v)| Some((c, Stat::of(v)?)))
                .collect();
            for c in &cols {
                match stats.get(c) {
                    Some(s) => md.push_str(&format!(" {} |", s.cell())),
                    None => md.push_str(" - |"),
                }
            }
            for (a, b) in &ratios {
                let cell = match (stats.get(a), stats.get(b)) {
                    (Some(x), Some(y)) => Ratio::of(x, y).map_or("-".into(), |r| r.cell()),
                    _ => "-".into(),
                };
                md.push_str(&format!(" {cell} |"));
            }
            md.push('\n');
            medians.insert(
                k.clone(),
                stats
                    .iter()
                    .map(|(c, s)| ((*c).clone(), s.median))
                    .collect(),
            );
        }
    }
    std::fs::write(o.out.join("report.md"), &md)?;
    let raw = json!({
        "command": cmd,
        "machine": machine,
        "loadavg": { "start": run.loadavg.0, "end": run.loadavg.1 },
        "rounds": o.rounds,
        "duration_secs": o.duration,
        "datapaths": o.datapaths,
        "peers": run.peers,
        "placements": o.cpus.iter().map(|p| p.name()).collect::<Vec<_>>(),
        "notes": run.notes,
        "programs": run.programs,
        "targets": targets,
        "xdp": xdp
            .iter()
            .map(|r| json!({
                "load": r.load,
                "figure": r.figure,
                "tc": r.tc.median,
                "xdp": r.xdp.median,
                "ratio": Ratio::of(&r.xdp, &r.tc).map(|x| x.value),
                "added_us_per_transaction": r.added_us(),
            }))
            .collect::<Vec<_>>(),
        "samples": samples,
    });
    std::fs::write(o.out.join("report.json"), serde_json::to_vec_pretty(&raw)?)?;
    charts(&o.out, &cols, &medians, &o.ports, lead)?;
    Ok(md)
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    json!({ "kernel": kernel.trim(), "cpu_model": cpu, "cores": num_cpus() })
}

pub(super) fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// One SVG bar chart per (placement, scenario, load, figure), named
/// `PLACEMENT_SCENARIO_LOAD_FIGURE.svg` (`control_...` for the control
/// plane); a line chart of CRR against the number of published ports.
fn charts(
    out: &Path,
    cols: &[String],
    medians: &BTreeMap<Key, BTreeMap<String, f64>>,
    ports: &[u32],
    lead: Placement,
) -> Result<()> {
    let dir = out.join("charts");
    std::fs::create_dir_all(&dir)?;
    for ((placement, scenario, load, figure), med) in medians {
        if scenario.starts_with("scaling_") {
            continue;
        }
        let max = med.values().cloned().fold(0.0, f64::max).max(1e-9);
        let (w, bar, gap) = (560.0, 28.0, 12.0);
        let h = 60.0 + cols.len() as f64 * (bar + gap);
        let title = if placement == "-" {
            format!("{scenario}: {figure} (median)")
        } else {
            format!("{scenario} {load}, {placement} CPU: {figure} (median)")
        };
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<text x='10' y='20' font-size='14'>{title}</text>\n"
        );
        for (n, c) in cols.iter().enumerate() {
            let Some(v) = med.get(c) else { continue };
            let y = 40.0 + n as f64 * (bar + gap);
            let len = (w - 240.0) * v / max;
            svg.push_str(&format!(
                "<text x='10' y='{}'>{c}</text><rect x='120' y='{y}' width='{len:.1}' height='{bar}' fill='{}'/><text x='{:.1}' y='{}'>{}</text>\n",
                y + bar * 0.65,
                COLORS[n % COLORS.len()],
                125.0 + len,
                y + bar * 0.65,
                fmt(*v)
            ));
        }
        svg.push_str("</svg>\n");
        // Figures of no placement (the control plane) keep the names
        // they had before placements.
        let name = if placement == "-" {
            format!("{scenario}_{load}_{figure}.svg")
        } else {
            format!("{placement}_{scenario}_{load}_{figure}.svg")
        };
        std::fs::write(dir.join(name), svg)?;
    }
    // CRR against published ports.
    let points: Vec<(u32, &BTreeMap<String, f64>)> = ports
        .iter()
        .filter_map(|n| {
            medians
                .get(&(
                    lead.name().to_string(),
                    format!("scaling_{n}"),
                    "TCP_CRR".into(),
                    "per_sec".into(),
                ))
                .map(|m| (*n, m))
        })
        .collect();
    if points.len() > 1 {
        let (w, h, pad) = (560.0, 320.0, 50.0);
        let max_y = points
            .iter()
            .flat_map(|(_, m)| m.values())
            .cloned()
            .fold(0.0, f64::max)
            .max(1e-9);
        let xs = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (points.len() - 1) as f64;
        let ys = |v: f64| h - pad - (h - 2.0 * pad) * v / max_y;
        let mut svg = format!(
            "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<text x='10' y='20' font-size='14'>TCP_CRR to the last-published port vs other published ports ({} CPU)</text>\n",
            lead.name()
        );
        for (i, (n, _)) in points.iter().enumerate() {
            svg.push_str(&format!(
                "<text x='{:.1}' y='{}'>{n}</text>\n",
                xs(i) - 10.0,
                h - pad + 20.0
            ));
        }
        for (ci, c) in cols.iter().enumerate() {
            let pts: Vec<String> = points
                .iter()
                .enumerate()
                .filter_map(|(i, (_, m))| m.get(c).map(|v| format!("{:.1},{:.1}", xs(i), ys(*v))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let color = COLORS[ci % COLORS.len()];
            svg.push_str(&format!(
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
                pts.join(" ")
            ));
            svg.push_str(&format!(
                "<text x='{}' y='{}' fill='{color}'>{c}</text>\n",
                w - pad - 60.0,
                40.0 + ci as f64 * 16.0
            ));
        }
        svg.push_str("</svg>\n");
        std::fs::write(dir.join("scaling_TCP_CRR.svg"), svg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(Stat::of(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn ratios_carry_their_noise() {
        let a = Stat::of(&[10.0, 12.0, 11.0]).unwrap();
        let b = Stat::of(&[5.0, 6.0, 5.5]).unwrap();
        let r = Ratio::of(&a, &b).unwrap();
        assert_eq!(r.value, 2.0);
        assert!((r.low - 10.0 / 6.0).abs() < 1e-9 && (r.high - 12.0 / 5.0).abs() < 1e-9);
        assert!(!r.within_noise);
        assert_eq!(r.cell(), "2.00x (1.67-2.40)");
        let c = Stat::of(&[9.0, 10.5, 13.0]).unwrap();
        let r = Ratio::of(&c, &a).unwrap();
        assert!(r.within_noise);
        assert!(r.cell().ends_with("within noise"));
        assert!(Ratio::of(&a, &Stat::of(&[0.0]).unwrap()).is_none());
    }

    fn sample(placement: &str, scenario: &str, dp: &str, v: f64) -> Sample {
        Sample {
            placement: placement.into(),
            scenario: scenario.into(),
            load: "TCP_RR".into(),
            datapath: dp.into(),
            round: 1,
            figures: [("per_sec".to_string(), v)].into(),
        }
    }

    #[test]
    fn targets_read_the_lead_placement() {
        let samples = vec![
            sample("same", "c2c", "ebpf", 40.0),
            sample("same", "c2c", "floor", 41.0),
            sample("same", "c2c", "iptables", 30.0),
            sample("cross", "c2c", "ebpf", 10.0),
            sample("cross", "c2c", "floor", 11.0),
        ];
        let by = group(&samples);
        let t = targets(&by, Placement::Same, &[]);
        let floor = t
            .iter()
            .find(|t| t.what.contains("bare veth") && t.what.contains("RR"))
            .unwrap();
        assert_eq!(floor.verdict, "met", "{}", floor.measured);
        assert!(floor.measured.starts_with("0.98x"));
        let ipt = t
            .iter()
            .find(|t| t.what == "c2c TCP_RR, ebpf / iptables")
            .unwrap();
        assert_eq!(ipt.verdict, "met");
        let docker = t
            .iter()
            .find(|t| t.what == "c2c TCP_RR, ebpf / Docker")
            .unwrap();
        assert_eq!(docker.verdict, "not measured");
        let t = targets(&by, Placement::Cross, &[]);
        let floor = t
            .iter()
            .find(|t| t.what.contains("bare veth") && t.what.contains("RR"))
            .unwrap();
        assert_eq!(floor.verdict, "missed");
    }
}
