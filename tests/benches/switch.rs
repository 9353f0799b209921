//! What a namespace switch costs: netns-core's `run` against the physical floor
//! (two raw `setns(2)` calls on one thread), the `netns-rs` crate, and Go's
//! `ns.Do` from Debian's containernetworking package.
//!
//! Run with `./x bench` (builds the Go anchor in `go-anchor/`, needs root). Rounds interleave the
//! contenders so machine noise hits them alike; figures are per-call medians.
//! Each round starts with a different contender (the order rotates). Prints
//! one `name: value` line per figure, then the ratios of the medians with
//! their per-round range: `run_vs_floor`, `go_do_vs_run`, `netns_rs_vs_run`.
//!
//! Environment: `NETNS_BENCH_GO_ANCHOR` (path of the built Go anchor; without it
//! Go is reported as unavailable), `NETNS_BENCH_ITERS` (calls per round, default
//! 20000), `NETNS_BENCH_ROUNDS` (default 7).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use netns_core::{NetNs, TempNetNs};
use netns_tests::bench::{env_u32, median, ratio_range};
use nix::sched::{CloneFlags, setns};

const FLOOR: &str = "floor";
const RUN: &str = "run";
const GUARD: &str = "guard";
const NETNS_RS: &str = "netns_rs";
const GO_DO: &str = "go_do";

fn per_call_ns(iters: u32, mut call: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        call();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
}

fn go_do_round(anchor: &str, ns: &TempNetNs, iters: u32) -> f64 {
    let out = Command::new(anchor)
        .args([
            "-netns",
            ns.path().to_str().unwrap(),
            "-iters",
            &iters.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run Go anchor {anchor}: {e}"));
    assert!(
        out.status.success(),
        "Go anchor failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("go_do_ns_per_call: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Go anchor printed no go_do_ns_per_call line")
}

/// One contender: its name and one round's measurement (ns per call).
type Leg<'a> = (&'static str, Box<dyn FnMut() -> f64 + 'a>);

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the switch benchmark needs root (setns): run `./x bench`"
    );
    let iters = env_u32("NETNS_BENCH_ITERS", 20_000);
    let rounds = env_u32("NETNS_BENCH_ROUNDS", 7);
    let go_anchor = std::env::var("NETNS_BENCH_GO_ANCHOR").ok();

    let target = TempNetNs::new("bench").expect("create bench namespace");
    let home = NetNs::current().expect("open own namespace");
    let rs_target = netns_rs::get_from_path(target.path()).expect("netns-rs opens the namespace");

    let mut legs: Vec<Leg<'_>> = vec![
        (
            FLOOR,
            Box::new(|| {
                per_call_ns(iters, || {
                    setns(&*target, CloneFlags::CLONE_NEWNET).unwrap();
                    setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
                })
            }),
        ),
        (
            RUN,
            Box::new(|| {
                per_call_ns(iters, || {
                    target
                        .run(|host| {
                            black_box(host);
                        })
                        .unwrap();
                })
            }),
        ),
        (
            GUARD,
            Box::new(|| per_call_ns(iters, || drop(black_box(target.enter().unwrap())))),
        ),
        (
            NETNS_RS,
            Box::new(|| {
                per_call_ns(iters, || {
                    rs_target
                        .run(|ns| {
                            black_box(ns);
                        })
                        .unwrap();
                })
            }),
        ),
    ];
    if let Some(anchor) = &go_anchor {
        legs.push((GO_DO, Box::new(|| go_do_round(anchor, &target, iters))));
    }
    // Warm up every path once (the per-thread record, page faults, Go's build cache).
    for (_, leg) in &mut legs {
        leg();
    }
    let mut figures: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds as usize {
        // Each round starts with another leg, so no contender always goes
        // first (cold caches) or last.
        let n = legs.len();
        for i in 0..n {
            let (name, leg) = &mut legs[(round + i) % n];
            figures.entry(*name).or_default().push(leg());
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    println!("iters_per_round: {iters}");
    println!("rounds: {rounds} (leg order rotated each round)");
    for (name, label) in [
        (FLOOR, "floor_two_setns_ns"),
        (RUN, "netns_core_run_ns"),
        (GUARD, "netns_core_enter_guard_ns"),
        (NETNS_RS, "netns_rs_run_ns"),
        (GO_DO, "go_do_ns"),
    ] {
        match figures.get(name) {
            Some(xs) => println!("{label}: {:.1}", median(xs.clone())),
            None => println!("{label}: unavailable (set NETNS_BENCH_GO_ANCHOR; `./x bench` does)"),
        }
    }
    for (label, num, den, precision) in [
        ("run_vs_floor", RUN, FLOOR, 3),
        ("go_do_vs_run", GO_DO, RUN, 2),
        ("netns_rs_vs_run", NETNS_RS, RUN, 2),
    ] {
        let (Some(a), Some(b)) = (figures.get(num), figures.get(den)) else {
            continue;
        };
        let (lo, hi) = ratio_range(a, b);
        println!(
            "{label}: {:.precision$} (per round {lo:.precision$}..{hi:.precision$})",
            median(a.clone()) / median(b.clone())
        );
    }
}
