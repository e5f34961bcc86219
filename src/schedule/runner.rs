//! When schedules fire: each once per matching minute, never early, at the nominal time.
//!
//! The planner is pure: given a schedule's expression, the last nominal time it handled and
//! the wall clock now, it says what is due. The next run is computed from the nominal time,
//! not from when the last run finished, and the clock is re-read after every sleep, so there
//! is no drift. A clock step forward (or egressd coming back after downtime) fires the most
//! recent due run once, if it is less than one interval old, and records the older ones as
//! missed — never a burst; a step back never fires a minute twice, because a schedule only
//! moves forward from the last nominal time it handled.

use chrono::{DateTime, Duration, Utc};

use super::cron::CronExpr;

/// What is due for one schedule now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Fire this nominal time now.
    pub fire: Option<DateTime<Utc>>,
    /// Nominal times that passed without a run (downtime, a clock step): recorded as
    /// `missed`, not fired. The newest first, at most [`MISSED_RECORDED`].
    pub missed: Vec<DateTime<Utc>>,
    /// The last nominal time now handled (fired or missed): the next plan starts after it.
    pub handled_through: DateTime<Utc>,
}

/// Missed runs recorded at most, per plan (the run history keeps 20 anyway).
pub const MISSED_RECORDED: usize = 20;

/// Plans one schedule: every nominal time in `(handled_through, now]` is due. The newest of
/// them fires if it is less than one interval old (the gap to the run after it); the rest
/// are missed.
pub fn plan(cron: &CronExpr, handled_through: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    let mut due = Vec::new();
    let mut at = handled_through;
    while let Some(next) = cron.next_after(at) {
        if next > now {
            break;
        }
        due.push(next);
        at = next;
        // A long downtime over an every-minute schedule: only the newest few matter.
        if due.len() > MISSED_RECORDED + 1 {
            due.remove(0);
        }
    }
    let Some(&newest) = due.last() else {
        return Due {
            fire: None,
            missed: Vec::new(),
            handled_through,
        };
    };
    let interval = cron
        .next_after(newest)
        .map(|after| after - newest)
        .unwrap_or(Duration::MAX);
    let fire = (now - newest < interval).then_some(newest);
    let mut missed: Vec<DateTime<Utc>> = due
        .iter()
        .rev()
        .copied()
        .filter(|t| Some(*t) != fire)
        .collect();
    missed.truncate(MISSED_RECORDED);
    Due {
        fire,
        missed,
        handled_through: newest,
    }
}

/// How long to sleep before the next nominal time after `handled_through`, seen from `now`;
/// `None` when the expression never fires again.
pub fn sleep_until_next(
    cron: &CronExpr,
    handled_through: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<std::time::Duration> {
    let next = cron.next_after(handled_through)?;
    Some((next - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn cron(expr: &str) -> CronExpr {
        CronExpr::parse(expr).unwrap()
    }

    /// (name, expression, handled through, now, fires, missed)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static [&'static str],
    );

    const PLANS: &[Case] = &[
        (
            "nothing due before the minute boundary",
            "*/5 * * * *",
            "2026-11-28T10:00:00Z",
            "2026-11-28T10:04:59.999Z",
            None,
            &[],
        ),
        (
            "due exactly at the nominal time, never early",
            "*/5 * * * *",
            "2026-11-28T10:00:00Z",
            "2026-11-28T10:05:00Z",
            Some("2026-11-28T10:05:00Z"),
            &[],
        ),
        (
            "a late wake-up still fires the nominal time",
            "*/5 * * * *",
            "2026-11-28T10:00:00Z",
            "2026-11-28T10:05:03Z",
            Some("2026-11-28T10:05:00Z"),
            &[],
        ),
        (
            "a clock step forward fires the newest once and records the rest as missed",
            "*/5 * * * *",
            "2026-11-28T10:00:00Z",
            "2026-11-28T10:17:00Z",
            Some("2026-11-28T10:15:00Z"),
            &["2026-11-28T10:10:00Z", "2026-11-28T10:05:00Z"],
        ),
        (
            "after downtime, a run older than one interval is only missed",
            "0 * * * *",
            "2026-11-28T07:00:00Z",
            "2026-11-28T10:30:00Z",
            Some("2026-11-28T10:00:00Z"),
            &["2026-11-28T09:00:00Z", "2026-11-28T08:00:00Z"],
        ),
        (
            "after days of downtime only the newest daily run fires",
            "0 3 * * *",
            "2026-11-25T03:00:00Z",
            "2026-11-28T03:00:00Z",
            Some("2026-11-28T03:00:00Z"),
            &["2026-11-27T03:00:00Z", "2026-11-26T03:00:00Z"],
        ),
        (
            "a clock step back fires nothing twice",
            "*/5 * * * *",
            "2026-11-28T10:15:00Z",
            "2026-11-28T10:07:00Z",
            None,
            &[],
        ),
    ];

    #[test]
    fn plans() {
        for (name, expr, handled, now, fires, missed) in PLANS {
            let due = plan(&cron(expr), t(handled), t(now));
            assert_eq!(due.fire, fires.map(t), "{name}");
            let missed: Vec<DateTime<Utc>> = missed.iter().map(|m| t(m)).collect();
            assert_eq!(due.missed, missed, "{name}");
        }
    }

    #[test]
    fn a_weekly_run_missed_by_days_fires_once_when_less_than_an_interval_old() {
        // Down from Sunday 00:00 to Wednesday: the Sunday run is 3 days old, the interval a week.
        let due = plan(
            &cron("@weekly"),
            t("2026-11-22T00:00:00Z"),
            t("2026-12-02T12:00:00Z"),
        );
        assert_eq!(due.fire, Some(t("2026-11-29T00:00:00Z")));
        assert!(due.missed.is_empty());
    }

    #[test]
    fn simulated_days_fire_every_matching_minute_exactly_once() {
        // Walk three simulated days minute by minute with late wake-ups of up to 59 s.
        let expr = cron("0 0 1-7 * SUN");
        let mut handled = t("2026-10-31T00:00:00Z");
        let mut fired = Vec::new();
        let mut now = handled;
        while now < t("2026-11-10T00:00:00Z") {
            now += Duration::seconds(37);
            let due = plan(&expr, handled, now);
            assert!(due.missed.is_empty(), "no step, nothing missed at {now}");
            fired.extend(due.fire);
            handled = due.handled_through;
        }
        let days: Vec<String> = fired.iter().map(|t| t.format("%d").to_string()).collect();
        assert_eq!(days, ["01", "02", "03", "04", "05", "06", "07", "08"]);
    }

    #[test]
    fn the_next_sleep_is_measured_from_now_to_the_nominal_time() {
        let expr = cron("*/5 * * * *");
        let sleep = sleep_until_next(&expr, t("2026-11-28T10:00:00Z"), t("2026-11-28T10:03:30Z"));
        assert_eq!(sleep, Some(std::time::Duration::from_secs(90)));
        // Already late: no negative sleep.
        let sleep = sleep_until_next(&expr, t("2026-11-28T10:00:00Z"), t("2026-11-28T10:06:00Z"));
        assert_eq!(sleep, Some(std::time::Duration::ZERO));
    }
}
