//! What a namespace switch costs: netns-core's `run` against the physical floor
//! (two raw `setns(2)` calls on one thread), the `netns-rs` crate, and Go's
//! `ns.Do` from Debian's containernetworking package.
//!
//! Run with `./x bench` (builds the Go anchor, needs root). Rounds interleave the
//! contenders so machine noise hits them alike; figures are per-call medians.
//! Prints one `name: value` line per figure, then the ratios:
//! `run_vs_floor`, `go_do_vs_run`, `netns_rs_vs_run`.
//!
//! Environment: `NETNS_BENCH_GO_ANCHOR` (path of the built Go anchor; without it
//! Go is reported as unavailable), `NETNS_BENCH_ITERS` (calls per round, default
//! 20000), `NETNS_BENCH_ROUNDS` (default 7).

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use netns_core::{NetNs, TempNetNs};
use nix::sched::{CloneFlags, setns};

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn per_call_ns(iters: u32, mut call: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..iters {
        call();
    }
    start.elapsed().as_secs_f64() * 1e9 / f64::from(iters)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
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

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported here.
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the switch benchmark needs root (setns): run `./x bench`"
    );
    let iters = env_or("NETNS_BENCH_ITERS", 20_000);
    let rounds = env_or("NETNS_BENCH_ROUNDS", 7);
    let go_anchor = std::env::var("NETNS_BENCH_GO_ANCHOR").ok();

    let target = TempNetNs::new("bench").expect("create bench namespace");
    let home = NetNs::current().expect("open own namespace");
    let rs_target = netns_rs::get_from_path(target.path()).expect("netns-rs opens the namespace");

    let (mut floor, mut run, mut enter, mut rs, mut go) = (vec![], vec![], vec![], vec![], vec![]);
    // Warm up every path once (the per-thread record, page faults, Go's build cache).
    target.run(|_| ()).unwrap();
    for round in 0..rounds {
        floor.push(per_call_ns(iters, || {
            setns(&*target, CloneFlags::CLONE_NEWNET).unwrap();
            setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
        }));
        run.push(per_call_ns(iters, || {
            target
                .run(|host| {
                    black_box(host);
                })
                .unwrap();
        }));
        enter.push(per_call_ns(iters, || {
            drop(black_box(target.enter().unwrap()));
        }));
        rs.push(per_call_ns(iters, || {
            rs_target
                .run(|ns| {
                    black_box(ns);
                })
                .unwrap();
        }));
        if let Some(anchor) = &go_anchor {
            go.push(go_do_round(anchor, &target, iters));
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    let floor = median(floor);
    let run = median(run);
    let rs = median(rs);
    println!("iters_per_round: {iters}");
    println!("rounds: {rounds}");
    println!("floor_two_setns_ns: {floor:.1}");
    println!("netns_core_run_ns: {run:.1}");
    println!("netns_core_enter_guard_ns: {:.1}", median(enter));
    println!("netns_rs_run_ns: {rs:.1}");
    if go.is_empty() {
        println!("go_do_ns: unavailable (set NETNS_BENCH_GO_ANCHOR; `./x bench` does)");
    } else {
        println!("go_do_ns: {:.1}", median(go.clone()));
    }
    println!("run_vs_floor: {:.3}", run / floor);
    if !go.is_empty() {
        println!("go_do_vs_run: {:.2}", median(go) / run);
    }
    println!("netns_rs_vs_run: {:.2}", rs / run);
}
