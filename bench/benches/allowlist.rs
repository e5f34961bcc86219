//! Allowlist decision time and reload time at 100k entries (issue 3, scenario 6).
//!
//! `cargo bench -p egressd-bench --bench allowlist`. Kept short: 2 s of measurement per
//! case. The workload (half exact, half wildcard entries; hosts that hit each kind or miss)
//! is the same one the harness times inline for its report.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use egressd::control::config::Config;
use egressd::policy::host::Host;
use egressd_bench::allowlist::{allowlist, config_text, entries, Mix, ENTRIES};

fn decision(c: &mut Criterion) {
    let list = allowlist(ENTRIES);
    let mut group = c.benchmark_group("decision_100k");
    group.throughput(Throughput::Elements(1));
    for mix in Mix::ALL {
        let hosts = mix.hosts(ENTRIES, 4096);
        let mut next = hosts.iter().cycle();
        group.bench_function(mix.name().replace(' ', "_"), |b| {
            b.iter(|| list.find(black_box(next.next().expect("cycle never ends"))))
        });
    }
    let names: Vec<String> = (0..4096)
        .map(|k| Mix::ALL[k % 3].host_name(ENTRIES, k))
        .collect();
    let mut next = names.iter().cycle();
    group.bench_function("parse_and_find_mixed", |b| {
        b.iter(|| {
            let host =
                Host::parse(black_box(next.next().expect("cycle never ends"))).expect("valid");
            list.find(&host)
        })
    });
    group.finish();
}

fn reload(c: &mut Criterion) {
    let text = config_text(&entries(ENTRIES));
    let mut group = c.benchmark_group("reload_100k");
    group.sample_size(10);
    group.bench_function("config_parse", |b| {
        b.iter(|| Config::parse(Path::new("bench.toml"), black_box(&text)).expect("valid"))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decision, reload
}
criterion_main!(benches);
