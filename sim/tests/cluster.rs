//! The whole-cluster simulation over many seeds.
//!
//! Seeds vary the size: three or five coordinators, three or four hosts.
//! `cargo test -p mirari-sim` runs 1,000 seeds; `MIRARI_SIM_SEEDS=N` runs N, `MIRARI_SIM_SEED=S`
//! replays one (a failure prints its seed), `MIRARI_SIM_FIRST_SEED` starts elsewhere. Longer
//! runs: `cargo test --release -p mirari-sim`.

use mirari_sim::{Scenario, World};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

#[test]
fn the_cluster_keeps_its_guarantees_under_faults() {
    let seeds: Vec<u64> = match env_u64("MIRARI_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("MIRARI_SIM_FIRST_SEED").unwrap_or(0);
            (first..first + env_u64("MIRARI_SIM_SEEDS").unwrap_or(1_000)).collect()
        }
    };
    let (mut faults, mut writes, mut instances, mut virtual_ms) = (0, 0, 0, 0);
    for &seed in &seeds {
        // Three or five coordinators, three or four hosts.
        let scenario = Scenario {
            coordinators: if seed % 3 == 2 { 5 } else { 3 },
            agents: 3 + (seed % 2) as usize,
            ..Scenario::default()
        };
        let report = World::new(seed, scenario).run(scenario);
        faults += report.faults;
        writes += report.acked_writes;
        instances += report.instances_run;
        virtual_ms += report.virtual_ms;
    }
    assert!(
        instances >= 5 * seeds.len(),
        "only {instances} instances ran in {} seeds: the runs test too little",
        seeds.len()
    );
    eprintln!(
        "{} seeds: {faults} faults, {writes} acknowledged writes, {instances} instances run, {} virtual seconds",
        seeds.len(),
        virtual_ms / 1000
    );
}
