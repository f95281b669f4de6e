//! Service levels for the city: how fast each alarm was answered and how fast
//! a carer arrived, against targets from the UK TSA code of practice, and the
//! monthly reports built on them ([`report`], [`output`]).
//!
//! All of it is pure — rows from [`Db::sla_data`] in, figures out — except
//! [`monthly_report`] and [`breach_list`], which read the rows and emit the
//! telemetry event.
//!
//! How an incident counts, in one place:
//!
//! * **Answer** (received → first claim by an operator) is measured for
//!   life-safety incidents that were not merged into another one (the other
//!   one carries the call). A cancelled incident nobody claimed counts as
//!   answered when an operator cancelled it. An incident that ended without a
//!   claim, or is still unclaimed after the longest answer limit, counts as
//!   *missing*: beyond every limit and on the breach list, never dropped.
//!   One still open and within that limit is *pending* and not counted yet.
//! * **Attend** (first carer accepted → first carer arrived) is measured for
//!   life-safety incidents a carer accepted, except cancelled (false alarms:
//!   nobody needed to arrive) and merged ones. Accepted with no arrival
//!   recorded counts as missing, as above.
//! * **Handled** (处置率): see [`report::Figures::handled_pct`].

pub mod month;
pub mod output;
pub mod report;

use serde::{Deserialize, Serialize};

pub use month::{BadMonth, Month};
pub use output::Format;
pub use report::{BreachList, Figures, GroupKey, Grouping, MonthlyReport, ReportRow};

use pingantong_domain::State;
use pingantong_store::{CoverageRow, Db, SlaDispatchRow, SlaIncidentRow, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SlaError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The limits and the share of incidents that must be within each. Defaults:
/// the UK TSA code of practice (97.5 % of alarm calls answered within 60 s,
/// 99 % within 180 s; 90 % of emergencies attended within 45 min, all within 60).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaTargets {
    /// An operator claims a life-safety alarm within this many seconds…
    pub answer_secs: u64,
    /// …in at least this percentage of incidents.
    pub answer_pct: f64,
    /// The outer answer limit and its percentage.
    pub answer_max_secs: u64,
    pub answer_max_pct: f64,
    /// A carer arrives within this many minutes of accepting…
    pub attend_mins: u64,
    /// …in at least this percentage of incidents.
    pub attend_pct: f64,
    /// The outer attend limit and its percentage.
    pub attend_max_mins: u64,
    pub attend_max_pct: f64,
}

impl Default for SlaTargets {
    fn default() -> Self {
        Self {
            answer_secs: 60,
            answer_pct: 97.5,
            answer_max_secs: 180,
            answer_max_pct: 99.0,
            attend_mins: 45,
            attend_pct: 90.0,
            attend_max_mins: 60,
            attend_max_pct: 100.0,
        }
    }
}

impl SlaTargets {
    /// Why these targets make no sense, if they do not.
    pub fn check(&self) -> Result<(), String> {
        if self.answer_secs == 0 || self.answer_max_secs < self.answer_secs {
            return Err("answer_secs must be at least 1 and answer_max_secs not below it".into());
        }
        if self.attend_mins == 0 || self.attend_max_mins < self.attend_mins {
            return Err("attend_mins must be at least 1 and attend_max_mins not below it".into());
        }
        let pcts = [
            self.answer_pct,
            self.answer_max_pct,
            self.attend_pct,
            self.attend_max_pct,
        ];
        if pcts.iter().any(|p| !(0.0..=100.0).contains(p)) {
            return Err("percentages must be between 0 and 100".into());
        }
        Ok(())
    }

    /// (limit in seconds, required percentage), inner limit first.
    pub fn tiers(&self, m: Measure) -> [(u64, f64); 2] {
        match m {
            Measure::Answer => [
                (self.answer_secs, self.answer_pct),
                (self.answer_max_secs, self.answer_max_pct),
            ],
            Measure::Attend => [
                (self.attend_mins * 60, self.attend_pct),
                (self.attend_max_mins * 60, self.attend_max_pct),
            ],
        }
    }
}

/// The two timed promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// Alarm received → claimed by an operator.
    Answer,
    /// Carer accepted → carer on scene.
    Attend,
}

impl Measure {
    pub fn as_str(self) -> &'static str {
        match self {
            Measure::Answer => "answer",
            Measure::Attend => "attend",
        }
    }
}

/// How one incident stands against one measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not part of this measure (technical lane, merged, no carer accepted …).
    NotCounted,
    /// Still open and within the longest limit: counted once it happens.
    Pending,
    /// It took this many milliseconds.
    Took(i64),
    /// It never happened although the incident is over, or it is still open
    /// past the longest limit: beyond every limit.
    Missing,
}

/// The steps of one incident, in milliseconds; `None` where a step did not
/// happen. A step that came before the one it is measured from (help sent
/// automatically before an operator claimed) counts as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Intervals {
    /// Device clock at the press → server receipt; `None` without a device
    /// clock, or when the device's clock was ahead of the server's.
    pub press_to_received_ms: Option<i64>,
    /// The answer time.
    pub received_to_claimed_ms: Option<i64>,
    pub claimed_to_dispatched_ms: Option<i64>,
    pub dispatched_to_accepted_ms: Option<i64>,
    /// The attend time.
    pub accepted_to_on_scene_ms: Option<i64>,
    pub received_to_resolved_ms: Option<i64>,
}

/// When each step of an incident first happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Milestones {
    pub pressed: Option<i64>,
    pub received: i64,
    pub claimed: Option<i64>,
    /// First offer to a carer, or first step to *dispatched*, whichever came first.
    pub dispatched: Option<i64>,
    pub accepted: Option<i64>,
    pub on_scene: Option<i64>,
    pub resolved: Option<i64>,
    pub cancelled: Option<i64>,
    /// The provider whose carer arrived first, else whose carer accepted first.
    pub went: Option<i64>,
}

/// Milestones of `row` given its offers (`dispatches` of other incidents are ignored).
pub fn milestones(row: &SlaIncidentRow, dispatches: &[&SlaDispatchRow]) -> Milestones {
    let mine = || dispatches.iter().filter(|d| d.incident_id == row.id);
    let first = |f: fn(&SlaDispatchRow) -> Option<i64>| {
        mine()
            .filter_map(|d| f(d).map(|t| (t, d.provider_id)))
            .min()
    };
    let offered = mine().map(|d| d.offered_at).min();
    let accepted = first(|d| d.accepted_at);
    let arrived = first(|d| d.arrived_at);
    Milestones {
        pressed: row.device_time,
        received: row.received_at,
        claimed: row.claimed_at,
        dispatched: [offered, row.dispatched_at].into_iter().flatten().min(),
        accepted: accepted.map(|a| a.0),
        on_scene: arrived.map(|a| a.0),
        resolved: row.resolved_at,
        cancelled: row.cancelled_at,
        went: arrived.or(accepted).map(|a| a.1),
    }
}

fn span(from: Option<i64>, to: Option<i64>) -> Option<i64> {
    Some((to? - from?).max(0))
}

pub fn intervals(m: &Milestones) -> Intervals {
    Intervals {
        press_to_received_ms: m.pressed.map(|p| m.received - p).filter(|d| *d >= 0),
        received_to_claimed_ms: span(Some(m.received), m.claimed),
        claimed_to_dispatched_ms: span(m.claimed, m.dispatched),
        dispatched_to_accepted_ms: span(m.dispatched, m.accepted),
        accepted_to_on_scene_ms: span(m.accepted, m.on_scene),
        received_to_resolved_ms: span(Some(m.received), m.resolved),
    }
}

fn is_over(state: &str) -> bool {
    State::parse(state).is_some_and(|s| !s.is_open())
}

/// Where the city counts an incident for its answer figures (module docs).
pub fn answer_standing(
    row: &SlaIncidentRow,
    m: &Milestones,
    targets: &SlaTargets,
    now: i64,
) -> Standing {
    if row.lane != "life_safety" || row.state == "merged" {
        return Standing::NotCounted;
    }
    let answered = m
        .claimed
        .or(m.cancelled.filter(|_| row.state == "cancelled"));
    let longest = targets.tiers(Measure::Answer)[1].0 as i64 * 1000;
    match answered {
        Some(t) => Standing::Took((t - m.received).max(0)),
        None if is_over(&row.state) || now - m.received > longest => Standing::Missing,
        None => Standing::Pending,
    }
}

/// Where the city counts an incident for its attend figures (module docs).
pub fn attend_standing(
    row: &SlaIncidentRow,
    m: &Milestones,
    targets: &SlaTargets,
    now: i64,
) -> Standing {
    if row.lane != "life_safety" || matches!(row.state.as_str(), "merged" | "cancelled") {
        return Standing::NotCounted;
    }
    let Some(accepted) = m.accepted else {
        return Standing::NotCounted;
    };
    let longest = targets.tiers(Measure::Attend)[1].0 as i64 * 1000;
    match m.on_scene {
        Some(t) => Standing::Took((t - accepted).max(0)),
        None if is_over(&row.state) || now - accepted > longest => Standing::Missing,
        None => Standing::Pending,
    }
}

/// Whether the incident was handled (处置): `None` when it is not in the
/// handled rate at all (cancelled or merged); resolved, or closed with an
/// outcome, is handled; anything else (still open, closed without an
/// outcome) is not.
pub fn handled(row: &SlaIncidentRow) -> Option<bool> {
    match row.state.as_str() {
        "cancelled" | "merged" => None,
        "resolved" => Some(true),
        "closed" => Some(row.outcome.as_deref().is_some_and(|o| !o.trim().is_empty())),
        _ => Some(false),
    }
}

/// The provider contracted for an address, as routing picks it: a contract
/// for the street before one for the whole district, then by rank.
pub fn contracted_provider(coverage: &[CoverageRow], district: &str, street: &str) -> Option<i64> {
    coverage
        .iter()
        .filter(|c| c.district == district && c.street.as_deref().is_none_or(|s| s == street))
        .min_by_key(|c| (c.street.is_none(), c.rank, c.provider_id))
        .map(|c| c.provider_id)
}

/// One incident, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessed<'a> {
    pub row: &'a SlaIncidentRow,
    /// Whose carer went (arrived first, else accepted first); with none, the
    /// provider contracted for the client's address.
    pub provider_id: Option<i64>,
    pub intervals: Intervals,
    pub handled: Option<bool>,
    pub answer: Standing,
    pub attend: Standing,
    /// When the attend clock started (first acceptance).
    pub accepted_at: Option<i64>,
}

pub fn assess<'a>(
    row: &'a SlaIncidentRow,
    dispatches: &[&SlaDispatchRow],
    coverage: &[CoverageRow],
    targets: &SlaTargets,
    now: i64,
) -> Assessed<'a> {
    let m = milestones(row, dispatches);
    let contracted = || match (&row.district, &row.street) {
        (Some(d), Some(s)) => contracted_provider(coverage, d, s),
        _ => None,
    };
    Assessed {
        row,
        provider_id: m.went.or_else(contracted),
        intervals: intervals(&m),
        handled: handled(row),
        answer: answer_standing(row, &m, targets, now),
        attend: attend_standing(row, &m, targets, now),
        accepted_at: m.accepted,
    }
}

/// Within the limit of `limit_secs`? Missing never is.
pub fn within(s: Standing, limit_secs: u64) -> bool {
    matches!(s, Standing::Took(ms) if ms <= limit_secs as i64 * 1000)
}

/// An incident over a limit: the longest limit it is over, what it took and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub limit_secs: u64,
    /// Whole seconds, rounded up; `None` when the step never happened.
    pub actual_secs: Option<i64>,
    pub why: String,
}

/// `90 s` for answers; `71 min`, `45 min 30 s` for attendance.
fn duration_text(m: Measure, secs: i64) -> String {
    match m {
        Measure::Answer => format!("{secs} s"),
        Measure::Attend if secs % 60 == 0 => format!("{} min", secs / 60),
        Measure::Attend => format!("{} min {} s", secs / 60, secs % 60),
    }
}

/// The breach, if the incident is over a limit of `m`. `started` is when the
/// clock of `m` started (receipt, acceptance) and `open` whether the incident
/// is still open, for the wording of a step still missing.
pub fn verdict(
    m: Measure,
    standing: Standing,
    targets: &SlaTargets,
    started: Option<i64>,
    open: bool,
    now: i64,
) -> Option<Verdict> {
    let tiers = targets.tiers(m);
    let longest = tiers[1].0;
    let limit = |secs: u64| duration_text(m, secs as i64);
    match standing {
        Standing::Took(ms) => {
            let limit_secs = tiers
                .iter()
                .map(|t| t.0)
                .filter(|l| ms > *l as i64 * 1000)
                .max()?;
            let actual = (ms + 999) / 1000;
            let verb = match m {
                Measure::Answer => "answered",
                Measure::Attend => "attended",
            };
            Some(Verdict {
                limit_secs,
                actual_secs: Some(actual),
                why: format!(
                    "{verb} after {} (limit {})",
                    duration_text(m, actual),
                    limit(limit_secs)
                ),
            })
        }
        Standing::Missing => {
            let waited = started.map(|t| duration_text(m, (now - t).max(0) / 1000));
            let why = match (m, open, waited) {
                (Measure::Answer, true, Some(w)) => {
                    format!("not answered yet after {w} (limit {})", limit(longest))
                }
                (Measure::Answer, _, _) => {
                    format!("never answered by an operator (limit {})", limit(longest))
                }
                (Measure::Attend, true, Some(w)) => format!(
                    "carer accepted {w} ago and has not arrived (limit {})",
                    limit(longest)
                ),
                (Measure::Attend, _, _) => format!(
                    "carer accepted but no arrival was recorded (limit {})",
                    limit(longest)
                ),
            };
            Some(Verdict {
                limit_secs: longest,
                actual_secs: None,
                why,
            })
        }
        Standing::NotCounted | Standing::Pending => None,
    }
}

/// The report for `month`, grouped `by`, with states as they stand at `now`.
pub async fn monthly_report(
    db: &Db,
    month: Month,
    by: Grouping,
    targets: &SlaTargets,
    now: i64,
) -> Result<MonthlyReport, SlaError> {
    let t = std::time::Instant::now();
    let data = db.sla_data(month.start_ms(), month.end_ms()).await?;
    let r = report::build_report(&data, month, by, targets, now);
    pingantong_telemetry::events::ReportBuilt {
        report: "monthly",
        by: by.as_str(),
        month: r.month(),
        incidents: data.incidents.len(),
        elapsed: t.elapsed(),
    }
    .emit();
    Ok(r)
}

/// Every incident of `month` over a limit, with states as they stand at `now`.
pub async fn breach_list(
    db: &Db,
    month: Month,
    targets: &SlaTargets,
    now: i64,
) -> Result<BreachList, SlaError> {
    let t = std::time::Instant::now();
    let data = db.sla_data(month.start_ms(), month.end_ms()).await?;
    let list = report::build_breaches(&data, month, targets, now);
    pingantong_telemetry::events::ReportBuilt {
        report: "breaches",
        by: "incident",
        month: list.month(),
        incidents: data.incidents.len(),
        elapsed: t.elapsed(),
    }
    .emit();
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    pub(crate) fn row(id: i64) -> SlaIncidentRow {
        SlaIncidentRow {
            id,
            opened_at: T0 + 500,
            kind: "sos".into(),
            lane: "life_safety".into(),
            state: "closed".into(),
            outcome: Some("visited".into()),
            client_id: Some(1),
            district: Some("越秀区".into()),
            street: Some("北京街".into()),
            subsidy_category: Some("living_alone".into()),
            received_at: T0,
            device_time: Some(T0 - 1_200),
            claimed_at: Some(T0 + 30_000),
            dispatched_at: None,
            resolved_at: Some(T0 + 3_000_000),
            cancelled_at: None,
        }
    }

    fn offer(incident: i64, provider: i64, at: i64) -> SlaDispatchRow {
        SlaDispatchRow {
            incident_id: incident,
            provider_id: provider,
            offered_at: at,
            accepted_at: None,
            arrived_at: None,
        }
    }

    #[test]
    fn intervals_of_a_whole_incident() {
        let r = row(1);
        let declined = offer(1, 7, T0 + 1_000);
        let went = SlaDispatchRow {
            accepted_at: Some(T0 + 100_000),
            arrived_at: Some(T0 + 100_000 + 20 * 60_000),
            ..offer(1, 8, T0 + 90_000)
        };
        let other = SlaDispatchRow {
            accepted_at: Some(T0),
            ..offer(2, 9, T0)
        };
        let m = milestones(&r, &[&declined, &went, &other]);
        assert_eq!(m.went, Some(8), "the provider whose carer went");
        let i = intervals(&m);
        assert_eq!(
            i,
            Intervals {
                press_to_received_ms: Some(1_200),
                received_to_claimed_ms: Some(30_000),
                // The automatic offer came before the claim.
                claimed_to_dispatched_ms: Some(0),
                dispatched_to_accepted_ms: Some(99_000),
                accepted_to_on_scene_ms: Some(20 * 60_000),
                received_to_resolved_ms: Some(3_000_000),
            }
        );
        let t = SlaTargets::default();
        assert_eq!(answer_standing(&r, &m, &t, T0), Standing::Took(30_000));
        assert_eq!(attend_standing(&r, &m, &t, T0), Standing::Took(20 * 60_000));
        assert_eq!(handled(&r), Some(true));
    }

    #[test]
    fn a_device_clock_ahead_of_the_server_gives_no_press_time() {
        let mut r = row(1);
        r.device_time = Some(T0 + 5_000);
        assert_eq!(intervals(&milestones(&r, &[])).press_to_received_ms, None);
        r.device_time = None;
        assert_eq!(intervals(&milestones(&r, &[])).press_to_received_ms, None);
    }

    #[test]
    fn never_claimed_is_missing_not_dropped() {
        let t = SlaTargets::default();
        let mut r = row(1);
        r.claimed_at = None;
        let m = milestones(&r, &[]);
        assert_eq!(answer_standing(&r, &m, &t, T0), Standing::Missing);
        let v = verdict(Measure::Answer, Standing::Missing, &t, Some(T0), false, T0).unwrap();
        assert_eq!(v.limit_secs, 180);
        assert_eq!(v.actual_secs, None);
        assert_eq!(v.why, "never answered by an operator (limit 180 s)");
        // Still open: pending within the longest limit, missing after it.
        r.state = "queued".into();
        r.resolved_at = None;
        assert_eq!(answer_standing(&r, &m, &t, T0 + 180_000), Standing::Pending);
        assert_eq!(answer_standing(&r, &m, &t, T0 + 180_001), Standing::Missing);
        let v = verdict(
            Measure::Answer,
            Standing::Missing,
            &t,
            Some(T0),
            true,
            T0 + 400_000,
        )
        .unwrap();
        assert_eq!(v.why, "not answered yet after 400 s (limit 180 s)");
    }

    #[test]
    fn cancelled_and_merged() {
        let t = SlaTargets::default();
        let mut r = row(1);
        r.state = "cancelled".into();
        r.claimed_at = None;
        r.cancelled_at = Some(T0 + 45_000);
        let accepted = SlaDispatchRow {
            accepted_at: Some(T0 + 10_000),
            ..offer(1, 8, T0 + 1_000)
        };
        let m = milestones(&r, &[&accepted]);
        // Taken off the queue by the operator who cancelled it.
        assert_eq!(answer_standing(&r, &m, &t, T0), Standing::Took(45_000));
        // A false alarm: nobody needed to arrive.
        assert_eq!(attend_standing(&r, &m, &t, T0), Standing::NotCounted);
        assert_eq!(handled(&r), None);
        r.state = "merged".into();
        assert_eq!(answer_standing(&r, &m, &t, T0), Standing::NotCounted);
        assert_eq!(handled(&r), None);
    }

    #[test]
    fn technical_jobs_have_no_sla_but_count_as_handled() {
        let t = SlaTargets::default();
        let mut r = row(1);
        r.lane = "technical".into();
        let m = milestones(&r, &[]);
        assert_eq!(answer_standing(&r, &m, &t, T0), Standing::NotCounted);
        assert_eq!(attend_standing(&r, &m, &t, T0), Standing::NotCounted);
        assert_eq!(handled(&r), Some(true));
        r.outcome = None;
        assert_eq!(handled(&r), Some(false), "closed without an outcome");
        r.state = "resolved".into();
        assert_eq!(handled(&r), Some(true));
        r.state = "on_scene".into();
        assert_eq!(handled(&r), Some(false));
    }

    #[test]
    fn accepted_but_never_arrived() {
        let t = SlaTargets::default();
        let r = row(1);
        let d = SlaDispatchRow {
            accepted_at: Some(T0 + 60_000),
            ..offer(1, 8, T0 + 1_000)
        };
        let m = milestones(&r, &[&d]);
        assert_eq!(attend_standing(&r, &m, &t, T0), Standing::Missing);
        let v = verdict(
            Measure::Attend,
            Standing::Missing,
            &t,
            m.accepted,
            false,
            T0,
        )
        .unwrap();
        assert_eq!(
            v.why,
            "carer accepted but no arrival was recorded (limit 60 min)"
        );
        // No carer accepted: nothing to attend.
        let m = milestones(&r, &[&offer(1, 8, T0)]);
        assert_eq!(attend_standing(&r, &m, &t, T0), Standing::NotCounted);
    }

    #[test]
    fn verdicts_name_the_longest_limit_passed() {
        let t = SlaTargets::default();
        let v = |m, ms| verdict(m, Standing::Took(ms), &t, None, false, T0);
        assert_eq!(v(Measure::Answer, 60_000), None, "at the limit is within");
        let w = v(Measure::Answer, 60_001).unwrap();
        assert_eq!((w.limit_secs, w.actual_secs), (60, Some(61)));
        let w = v(Measure::Answer, 212_000).unwrap();
        assert_eq!(w.why, "answered after 212 s (limit 180 s)");
        assert_eq!(w.limit_secs, 180);
        let w = v(Measure::Attend, 71 * 60_000).unwrap();
        assert_eq!(w.why, "attended after 71 min (limit 60 min)");
        let w = v(Measure::Attend, 45 * 60_000 + 30_000).unwrap();
        assert_eq!(w.why, "attended after 45 min 30 s (limit 45 min)");
        assert_eq!(v(Measure::Attend, 45 * 60_000), None);
        assert!(within(Standing::Took(60_000), 60));
        assert!(!within(Standing::Missing, 180));
        assert!(!within(Standing::Pending, 180));
    }

    #[test]
    fn contract_order() {
        let c = |provider_id, street: Option<&str>, rank| CoverageRow {
            provider_id,
            district: "越秀区".into(),
            street: street.map(str::to_owned),
            rank,
        };
        let cov = [
            c(1, None, 0),
            c(2, Some("北京街"), 5),
            c(3, None, 9),
            c(4, Some("大东街"), 0),
        ];
        assert_eq!(contracted_provider(&cov, "越秀区", "北京街"), Some(2));
        assert_eq!(contracted_provider(&cov, "越秀区", "人民街"), Some(1));
        assert_eq!(contracted_provider(&cov, "天河区", "北京街"), None);
    }

    #[test]
    fn targets_are_checked() {
        assert!(SlaTargets::default().check().is_ok());
        let bad = SlaTargets {
            answer_max_secs: 30,
            ..SlaTargets::default()
        };
        assert!(bad.check().is_err());
        let bad = SlaTargets {
            attend_pct: 101.0,
            ..SlaTargets::default()
        };
        assert!(bad.check().is_err());
    }
}
