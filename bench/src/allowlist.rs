//! Allowlist workload: a large list of half exact, half wildcard entries, hosts that hit
//! each kind or miss, and a whole config file built from the list. Shared by the harness's
//! inline timing (so the report has the figures) and the criterion bench (the rigorous
//! version: `cargo bench -p egressd-bench --bench allowlist`).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use egressd::control::config::Config;
use egressd::policy::allowlist::{Allowlist, Pattern};
use egressd::policy::host::Host;

/// The entry count the issue asks about.
pub const ENTRIES: usize = 100_000;

/// Entry `i`: even ones exact (`api7.svc7.example.com`), odd ones wildcards
/// (`*.tenant7.apps.example.net`).
pub fn entry(i: usize) -> String {
    if i.is_multiple_of(2) {
        format!("api{i}.svc{}.example.com", i % 1000)
    } else {
        format!("*.tenant{i}.apps.example.net")
    }
}

pub fn entries(n: usize) -> Vec<String> {
    (0..n).map(entry).collect()
}

pub fn allowlist(n: usize) -> Allowlist {
    Allowlist::new(
        entries(n)
            .iter()
            .map(|e| Pattern::parse(e).expect("generated entries are valid")),
    )
}

/// A whole egressd config whose allowlist holds `entries`, one per line as people write it.
pub fn config_text(entries: &[String]) -> String {
    let mut text = String::with_capacity(entries.len() * 40 + 256);
    text.push_str(
        "[proxy]\nlisten = \"127.0.0.1:3128\"\nadmin_listen = \"127.0.0.1:9901\"\n\n[allowlist]\ndomains = [\n",
    );
    for entry in entries {
        text.push_str("  \"");
        text.push_str(entry);
        text.push_str("\",\n");
    }
    text.push_str("]\n");
    text
}

/// Which way a looked-up host relates to the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Equals an exact entry: one hash probe.
    ExactHit,
    /// Two labels below a wildcard's suffix: a failed exact probe, then two suffix probes.
    WildcardHit,
    /// Matches nothing: the exact probe and a probe per parent domain.
    Miss,
}

impl Mix {
    pub const ALL: [Mix; 3] = [Mix::ExactHit, Mix::WildcardHit, Mix::Miss];

    pub fn name(self) -> &'static str {
        match self {
            Mix::ExactHit => "exact hit",
            Mix::WildcardHit => "wildcard hit",
            Mix::Miss => "miss",
        }
    }

    /// Target host number `k` for a list of `n` entries (spread over the whole list so the
    /// lookups do not stay in one corner of the tables).
    pub fn host_name(self, n: usize, k: usize) -> String {
        let pair = (k * 7919) % (n / 2).max(1);
        match self {
            Mix::ExactHit => entry(2 * pair),
            Mix::WildcardHit => format!("x{k}.web.tenant{}.apps.example.net", 2 * pair + 1),
            Mix::Miss => format!("www.shop{pair}.example.org"),
        }
    }

    pub fn hosts(self, n: usize, count: usize) -> Vec<Host> {
        (0..count)
            .map(|k| Host::parse(&self.host_name(n, k)).expect("generated hosts are valid"))
            .collect()
    }
}

/// Inline timings for the report.
#[derive(Debug, Clone)]
pub struct Timings {
    pub entries: usize,
    /// Nanoseconds per `Allowlist::find` on an already parsed host, per mix.
    pub find_ns: Vec<(Mix, f64)>,
    /// Nanoseconds for `Host::parse` of the target plus `find`, all mixes in turn.
    pub parse_and_find_ns: f64,
    /// `Config::parse` of a whole file holding the list: TOML, entries, index.
    pub reload: Duration,
    /// How many reloads `reload` is the best of.
    pub reload_tries: usize,
    /// Of which: `Pattern::parse` of every entry.
    pub patterns: Duration,
    /// Of which: building the index from parsed patterns.
    pub index: Duration,
}

/// Times lookups over about `lookups` queries per mix, and reloads of an `n`-entry file: the
/// best of `reloads` tries, or a single one when it takes more than a second.
pub fn measure(n: usize, lookups: usize, reloads: usize) -> anyhow::Result<Timings> {
    let list = allowlist(n);
    let distinct = 4096;
    let rounds = lookups.div_ceil(distinct).max(1);
    let mut find_ns = Vec::new();
    for mix in Mix::ALL {
        let hosts = mix.hosts(n, distinct);
        let expect_hit = mix != Mix::Miss;
        anyhow::ensure!(
            hosts.iter().all(|h| list.find(h).is_some() == expect_hit),
            "workload broken: {} hosts do not all {}",
            mix.name(),
            if expect_hit { "match" } else { "miss" }
        );
        let started = Instant::now();
        for _ in 0..rounds {
            for host in &hosts {
                black_box(list.find(black_box(host)));
            }
        }
        find_ns.push((mix, per_op_ns(started.elapsed(), rounds * hosts.len())));
    }
    let names: Vec<String> = Mix::ALL
        .iter()
        .flat_map(|mix| (0..distinct).map(|k| mix.host_name(n, k)))
        .collect();
    let started = Instant::now();
    for _ in 0..rounds {
        for name in &names {
            let host = Host::parse(black_box(name)).expect("valid");
            black_box(list.find(&host));
        }
    }
    let parse_and_find_ns = per_op_ns(started.elapsed(), rounds * names.len());

    let raw = entries(n);
    let text = config_text(&raw);
    let mut reload = Duration::MAX;
    let mut patterns = Duration::MAX;
    let mut index = Duration::MAX;
    let mut reload_tries = 0;
    while reload_tries < reloads.max(1) && (reload_tries == 0 || reload < Duration::from_secs(1)) {
        reload_tries += 1;
        let started = Instant::now();
        let config = Config::parse(Path::new("bench-allowlist.toml"), black_box(&text))
            .map_err(|e| anyhow::anyhow!("generated config refused: {e}"))?;
        reload = reload.min(started.elapsed());
        anyhow::ensure!(config.policy.allowlist.len() == n, "reload lost entries");
        drop(config);

        let started = Instant::now();
        let parsed: Vec<Pattern> = raw
            .iter()
            .map(|e| Pattern::parse(e).expect("valid"))
            .collect();
        patterns = patterns.min(started.elapsed());
        let started = Instant::now();
        black_box(Allowlist::new(parsed));
        index = index.min(started.elapsed());
    }
    Ok(Timings {
        entries: n,
        find_ns,
        parse_and_find_ns,
        reload,
        reload_tries,
        patterns,
        index,
    })
}

fn per_op_ns(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mix_hits_or_misses_as_named() {
        let list = allowlist(1000);
        assert!(Mix::ExactHit
            .hosts(1000, 50)
            .iter()
            .all(|h| list.find(h).is_some()));
        assert!(Mix::WildcardHit
            .hosts(1000, 50)
            .iter()
            .all(|h| list.find(h).is_some()));
        assert!(Mix::Miss
            .hosts(1000, 50)
            .iter()
            .all(|h| list.find(h).is_none()));
    }

    #[test]
    fn generated_config_is_accepted() {
        let text = config_text(&entries(10));
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(config.policy.allowlist.len(), 10);
    }
}
