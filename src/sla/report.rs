//! The monthly figures for the city, per provider, district, street or subsidy
//! category, and the breach list: built from [`SlaData`] without I/O.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    Assessed, Intervals, Measure, Month, SlaTargets, Standing, assess, contracted_provider,
    month::format_cst, verdict, within,
};
use pingantong_store::{OfflineSpell, SlaData, SlaDispatchRow};

/// How the rows of a report are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Grouping {
    Provider,
    District,
    Street,
    Category,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a grouping (provider, district, street, category)")]
pub struct BadGrouping(pub String);

impl Grouping {
    pub fn as_str(self) -> &'static str {
        match self {
            Grouping::Provider => "provider",
            Grouping::District => "district",
            Grouping::Street => "street",
            Grouping::Category => "category",
        }
    }
}

impl std::str::FromStr for Grouping {
    type Err = BadGrouping;

    fn from_str(s: &str) -> Result<Self, BadGrouping> {
        Ok(match s {
            "provider" => Grouping::Provider,
            "district" => Grouping::District,
            "street" => Grouping::Street,
            "category" => Grouping::Category,
            _ => return Err(BadGrouping(s.to_owned())),
        })
    }
}

/// Incidents and devices of no known client (an unverified device, a device
/// not given to anyone) are reported under this district, street and category.
pub const UNKNOWN: &str = "(unknown)";
/// The category of a client with no subsidy category on file.
pub const NO_CATEGORY: &str = "(none)";

/// The Chinese name of a subsidy category, as the bureau's forms print it.
pub fn category_label(c: &str) -> &'static str {
    match c {
        "destitute" => "特困",
        "advanced_age" => "高龄",
        "living_alone" => "独居",
        "special_contribution" => "特殊贡献",
        NO_CATEGORY => "未登记",
        _ => "",
    }
}

/// One row's identity; only the fields of its grouping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum GroupKey {
    /// `provider_id` `None`: no carer went and no provider is contracted for the address.
    Provider {
        provider_id: Option<i64>,
        provider: String,
    },
    District {
        district: String,
    },
    Street {
        district: String,
        street: String,
    },
    Category {
        subsidy_category: String,
        category_label: &'static str,
    },
}

/// The answer or attend figures of a group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SlaFigures {
    /// Incidents measured; a missing time counts, beyond every limit.
    pub measured: u64,
    /// Not measurable yet: still open and within the longest limit.
    pub pending: u64,
    /// Within the inner limit (60 s; 45 min by default) …
    pub within: u64,
    pub within_pct: Option<f64>,
    /// … and within the outer limit (180 s; 60 min).
    pub within_max: u64,
    pub within_max_pct: Option<f64>,
    /// Both percentages reach their targets; `None` with nothing measured.
    pub target_met: Option<bool>,
}

/// Device supervision of a group's clients.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceFigures {
    /// Devices heard from at least once before the end of the period, not retired.
    pub watched: u64,
    /// Of them, without an open offline job at the end of the period (or now, if sooner).
    pub online: u64,
    pub online_pct: Option<f64>,
    /// Share of the watched device-time in the period without an open offline job.
    pub uptime_pct: Option<f64>,
    #[serde(skip)]
    watched_ms: i64,
    #[serde(skip)]
    offline_ms: i64,
}

/// What the city sees for one group (or for all of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    /// Life-safety incidents opened in the period (cancelled and merged ones included).
    pub incidents_life_safety: u64,
    /// Technical jobs opened in the period (low battery, offline, …).
    pub incidents_technical: u64,
    pub cancelled: u64,
    pub merged: u64,
    /// Incidents resolved, or closed with an outcome.
    pub handled: u64,
    /// Incidents neither cancelled nor merged.
    pub handled_base: u64,
    /// 处置率, the handled rate: of the incidents (both lanes) opened in the
    /// period that were neither cancelled nor merged, the percentage that is,
    /// when the report is made, resolved or closed with an outcome.
    /// Cancelled incidents (false alarms, troubles the device reported over)
    /// and merged ones (repeats of another incident) are in neither number.
    pub handled_pct: Option<f64>,
    pub answer: SlaFigures,
    pub attend: SlaFigures,
    pub devices: DeviceFigures,
    /// Wellbeing calls made in the period to residents of the group.
    pub wellbeing_checks: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportRow {
    #[serde(flatten)]
    pub key: GroupKey,
    #[serde(flatten)]
    pub figures: Figures,
}

/// The header every report and breach list carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Period {
    /// `YYYY-MM`, in China Standard Time.
    pub month: String,
    pub time_zone: &'static str,
    /// The month's first millisecond (UTC epoch ms) and the first after it.
    pub from_ms: i64,
    pub to_ms: i64,
    /// States, pending incidents and device status are as of this time.
    pub as_of_ms: i64,
    pub targets: SlaTargets,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyReport {
    #[serde(flatten)]
    pub period: Period,
    pub by: Grouping,
    pub rows: Vec<ReportRow>,
    /// The whole city.
    pub total: Figures,
}

impl MonthlyReport {
    pub fn month(&self) -> &str {
        &self.period.month
    }
}

/// One incident over one limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub incident_id: i64,
    pub opened_at: i64,
    /// `opened_at` in China Standard Time.
    pub opened_local: String,
    pub lane: String,
    pub kind: String,
    pub state: String,
    pub provider_id: Option<i64>,
    pub provider: Option<String>,
    pub district: String,
    pub street: String,
    pub subsidy_category: String,
    pub measure: Measure,
    /// The longest limit passed, in seconds.
    pub limit_secs: u64,
    /// What it took, rounded up to the second; `None`: it never happened.
    pub actual_secs: Option<i64>,
    pub why: String,
    pub intervals: Intervals,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreachList {
    #[serde(flatten)]
    pub period: Period,
    pub breaches: Vec<Breach>,
}

impl BreachList {
    pub fn month(&self) -> &str {
        &self.period.month
    }
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn period(month: Month, targets: &SlaTargets, now: i64) -> Period {
    Period {
        month: month.to_string(),
        time_zone: "UTC+08:00 (China Standard Time)",
        from_ms: month.start_ms(),
        to_ms: month.end_ms(),
        as_of_ms: now,
        targets: *targets,
    }
}

fn assess_all<'a>(data: &'a SlaData, targets: &SlaTargets, now: i64) -> Vec<Assessed<'a>> {
    let mut offers: HashMap<i64, Vec<&SlaDispatchRow>> = HashMap::new();
    for d in &data.dispatches {
        offers.entry(d.incident_id).or_default().push(d);
    }
    data.incidents
        .iter()
        .map(|row| {
            let mine = offers.get(&row.id).map_or(&[][..], Vec::as_slice);
            assess(row, mine, &data.coverage, targets, now)
        })
        .collect()
}

/// Names of providers by id.
fn provider_names(data: &SlaData) -> HashMap<i64, &str> {
    data.providers
        .iter()
        .map(|(id, name)| (*id, name.as_str()))
        .collect()
}

/// Where a client lives and what they receive, as a row key.
struct Place<'a> {
    district: Option<&'a str>,
    street: Option<&'a str>,
    category: Option<&'a str>,
    known: bool,
    provider_id: Option<i64>,
}

fn key_of(by: Grouping, p: &Place<'_>, names: &HashMap<i64, &str>) -> GroupKey {
    let unknown = |v: Option<&str>| v.unwrap_or(UNKNOWN).to_owned();
    match by {
        Grouping::Provider => GroupKey::Provider {
            provider_id: p.provider_id,
            provider: match p.provider_id {
                Some(id) => names
                    .get(&id)
                    .map_or_else(|| format!("provider {id}"), |n| (*n).to_owned()),
                None => "(none)".to_owned(),
            },
        },
        Grouping::District => GroupKey::District {
            district: unknown(p.district),
        },
        Grouping::Street => GroupKey::Street {
            district: unknown(p.district),
            street: unknown(p.street),
        },
        Grouping::Category => {
            let c = match (p.known, p.category) {
                (false, _) => UNKNOWN,
                (true, None) => NO_CATEGORY,
                (true, Some(c)) => c,
            };
            GroupKey::Category {
                subsidy_category: c.to_owned(),
                category_label: category_label(c),
            }
        }
    }
}

fn count_sla(f: &mut SlaFigures, s: Standing, targets: &SlaTargets, m: Measure) {
    let [(inner, _), (outer, _)] = targets.tiers(m);
    match s {
        Standing::NotCounted => {}
        Standing::Pending => f.pending += 1,
        Standing::Took(_) | Standing::Missing => {
            f.measured += 1;
            f.within += u64::from(within(s, inner));
            f.within_max += u64::from(within(s, outer));
        }
    }
}

fn add(f: &mut Figures, a: &Assessed<'_>, targets: &SlaTargets) {
    if a.row.lane == "life_safety" {
        f.incidents_life_safety += 1;
    } else {
        f.incidents_technical += 1;
    }
    match a.row.state.as_str() {
        "cancelled" => f.cancelled += 1,
        "merged" => f.merged += 1,
        _ => {}
    }
    if let Some(h) = a.handled {
        f.handled_base += 1;
        f.handled += u64::from(h);
    }
    count_sla(&mut f.answer, a.answer, targets, Measure::Answer);
    count_sla(&mut f.attend, a.attend, targets, Measure::Attend);
}

/// The merged offline time of `spells` inside `[from, to)`.
pub fn offline_ms(spells: &[&OfflineSpell], from: i64, to: i64) -> i64 {
    let mut clipped: Vec<(i64, i64)> = spells
        .iter()
        .map(|s| (s.opened_at.max(from), s.ended_at.unwrap_or(to).min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    clipped.sort_unstable();
    let mut total = 0;
    let mut reach = from;
    for (a, b) in clipped {
        let a = a.max(reach);
        if b > a {
            total += b - a;
            reach = b;
        }
    }
    total
}

/// Offline at the instant `at`?
pub fn offline_at(spells: &[&OfflineSpell], at: i64) -> bool {
    spells
        .iter()
        .any(|s| s.opened_at <= at && s.ended_at.is_none_or(|e| e > at))
}

fn finish_sla(f: &mut SlaFigures, targets: &SlaTargets, m: Measure) {
    let [(_, inner_pct), (_, outer_pct)] = targets.tiers(m);
    f.within_pct = pct(f.within, f.measured);
    f.within_max_pct = pct(f.within_max, f.measured);
    // Compared in counts, not rounded percentages: 39 of 40 is 97.5 %.
    let reaches = |n: u64, target: f64| n as f64 * 100.0 >= target * f.measured as f64;
    f.target_met =
        (f.measured > 0).then(|| reaches(f.within, inner_pct) && reaches(f.within_max, outer_pct));
}

fn finish(f: &mut Figures, targets: &SlaTargets) {
    f.handled_pct = pct(f.handled, f.handled_base);
    finish_sla(&mut f.answer, targets, Measure::Answer);
    finish_sla(&mut f.attend, targets, Measure::Attend);
    let d = &mut f.devices;
    d.online_pct = pct(d.online, d.watched);
    d.uptime_pct = (d.watched_ms > 0)
        .then(|| (d.watched_ms - d.offline_ms) as f64 * 100.0 / d.watched_ms as f64);
}

/// The month's figures per group, as they stand at `now`.
pub fn build_report(
    data: &SlaData,
    month: Month,
    by: Grouping,
    targets: &SlaTargets,
    now: i64,
) -> MonthlyReport {
    let names = provider_names(data);
    let mut rows: BTreeMap<GroupKey, Figures> = BTreeMap::new();
    let mut total = Figures::default();
    for a in assess_all(data, targets, now) {
        let place = Place {
            district: a.row.district.as_deref(),
            street: a.row.street.as_deref(),
            category: a.row.subsidy_category.as_deref(),
            known: a.row.district.is_some(),
            provider_id: a.provider_id,
        };
        add(
            rows.entry(key_of(by, &place, &names)).or_default(),
            &a,
            targets,
        );
        add(&mut total, &a, targets);
    }

    // Devices: watched time runs from the first report (or the month's
    // start) to the month's end, or to now for the month under way.
    let (from, to) = (month.start_ms(), month.end_ms().min(now));
    let mut spells: HashMap<&str, Vec<&OfflineSpell>> = HashMap::new();
    for s in &data.offline {
        spells.entry(s.device_id.as_str()).or_default().push(s);
    }
    // A month not begun yet has no device-time at all.
    for d in data.devices.iter().filter(|d| from < to && d.heard_at < to) {
        let mine = spells.get(d.id.as_str()).map_or(&[][..], Vec::as_slice);
        let start = d.heard_at.max(from);
        let watched_ms = (to - start).max(0);
        let off = offline_ms(mine, start, to);
        let online = !offline_at(mine, to - 1);
        let provider_id = match (&d.district, &d.street) {
            (Some(di), Some(st)) => contracted_provider(&data.coverage, di, st),
            _ => None,
        };
        let place = Place {
            district: d.district.as_deref(),
            street: d.street.as_deref(),
            category: d.subsidy_category.as_deref(),
            known: d.district.is_some(),
            provider_id,
        };
        for f in [
            &mut rows.entry(key_of(by, &place, &names)).or_default().devices,
            &mut total.devices,
        ] {
            f.watched += 1;
            f.online += u64::from(online);
            f.watched_ms += watched_ms;
            f.offline_ms += off;
        }
    }

    // Wellbeing calls, counted where their resident lives.
    for w in &data.wellbeing {
        let place = Place {
            district: Some(&w.district),
            street: Some(&w.street),
            category: w.subsidy_category.as_deref(),
            known: true,
            provider_id: contracted_provider(&data.coverage, &w.district, &w.street),
        };
        rows.entry(key_of(by, &place, &names))
            .or_default()
            .wellbeing_checks += 1;
        total.wellbeing_checks += 1;
    }

    finish(&mut total, targets);
    MonthlyReport {
        period: period(month, targets, now),
        by,
        rows: rows
            .into_iter()
            .map(|(key, mut figures)| {
                finish(&mut figures, targets);
                ReportRow { key, figures }
            })
            .collect(),
        total,
    }
}

/// Every incident of the month over a limit, oldest first.
pub fn build_breaches(data: &SlaData, month: Month, targets: &SlaTargets, now: i64) -> BreachList {
    let names = provider_names(data);
    let mut breaches = Vec::new();
    for a in assess_all(data, targets, now) {
        let open = pingantong_domain::State::parse(&a.row.state).is_some_and(|s| s.is_open());
        let checks = [
            (Measure::Answer, a.answer, Some(a.row.received_at)),
            (Measure::Attend, a.attend, a.accepted_at),
        ];
        for (m, standing, started) in checks {
            let Some(v) = verdict(m, standing, targets, started, open, now) else {
                continue;
            };
            let known = a.row.district.is_some();
            breaches.push(Breach {
                incident_id: a.row.id,
                opened_at: a.row.opened_at,
                opened_local: format_cst(a.row.opened_at),
                lane: a.row.lane.clone(),
                kind: a.row.kind.clone(),
                state: a.row.state.clone(),
                provider_id: a.provider_id,
                provider: a
                    .provider_id
                    .and_then(|id| names.get(&id).map(|n| (*n).to_owned())),
                district: a.row.district.clone().unwrap_or_else(|| UNKNOWN.into()),
                street: a.row.street.clone().unwrap_or_else(|| UNKNOWN.into()),
                subsidy_category: match (&a.row.subsidy_category, known) {
                    (_, false) => UNKNOWN.into(),
                    (None, true) => NO_CATEGORY.into(),
                    (Some(c), true) => c.clone(),
                },
                measure: m,
                limit_secs: v.limit_secs,
                actual_secs: v.actual_secs,
                why: v.why,
                intervals: a.intervals,
            });
        }
    }
    breaches.sort_by_key(|b| (b.opened_at, b.incident_id, b.measure));
    BreachList {
        period: period(month, targets, now),
        breaches,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingantong_store::{CoverageRow, SlaDeviceRow, SlaIncidentRow, SlaWellbeingRow};

    const NOV: &str = "2026-11";

    fn month() -> Month {
        NOV.parse().unwrap()
    }

    fn incident(id: i64, district: &str, category: &str, answer_s: Option<i64>) -> SlaIncidentRow {
        let t0 = month().start_ms() + id * 3_600_000;
        SlaIncidentRow {
            id,
            opened_at: t0,
            kind: "sos".into(),
            lane: "life_safety".into(),
            state: "resolved".into(),
            outcome: None,
            client_id: Some(id),
            district: Some(district.into()),
            street: Some("一街".into()),
            subsidy_category: Some(category.into()),
            received_at: t0,
            device_time: None,
            claimed_at: answer_s.map(|s| t0 + s * 1000),
            dispatched_at: None,
            resolved_at: Some(t0 + 600_000),
            cancelled_at: None,
        }
    }

    fn data() -> SlaData {
        let mut cancelled = incident(4, "天河区", "destitute", Some(20));
        cancelled.state = "cancelled".into();
        let mut technical = incident(5, "越秀区", "advanced_age", None);
        technical.lane = "technical".into();
        technical.state = "queued".into();
        SlaData {
            wellbeing: vec![
                SlaWellbeingRow {
                    district: "越秀区".into(),
                    street: "一街".into(),
                    subsidy_category: Some("living_alone".into()),
                },
                SlaWellbeingRow {
                    district: "越秀区".into(),
                    street: "二街".into(),
                    subsidy_category: Some("advanced_age".into()),
                },
            ],
            incidents: vec![
                incident(1, "越秀区", "living_alone", Some(30)),
                incident(2, "越秀区", "living_alone", Some(90)),
                incident(3, "越秀区", "advanced_age", None),
                cancelled,
                technical,
            ],
            dispatches: vec![SlaDispatchRow {
                incident_id: 1,
                provider_id: 20,
                offered_at: month().start_ms() + 3_600_000,
                accepted_at: Some(month().start_ms() + 3_600_000 + 60_000),
                arrived_at: Some(month().start_ms() + 3_600_000 + 50 * 60_000),
            }],
            providers: vec![(10, "颐康中心".into()), (20, "应急援助队".into())],
            coverage: vec![CoverageRow {
                provider_id: 10,
                district: "越秀区".into(),
                street: None,
                rank: 0,
            }],
            devices: vec![
                SlaDeviceRow {
                    id: "A".into(),
                    heard_at: 0,
                    district: Some("越秀区".into()),
                    street: Some("一街".into()),
                    subsidy_category: Some("living_alone".into()),
                },
                SlaDeviceRow {
                    id: "B".into(),
                    heard_at: 0,
                    district: Some("天河区".into()),
                    street: Some("一街".into()),
                    subsidy_category: None,
                },
            ],
            offline: vec![OfflineSpell {
                device_id: "A".into(),
                opened_at: month().end_ms() - 3 * 86_400_000,
                ended_at: None,
            }],
        }
    }

    #[test]
    fn per_provider() {
        let t = SlaTargets::default();
        let r = build_report(&data(), month(), Grouping::Provider, &t, month().end_ms());
        assert_eq!(r.rows.len(), 3, "{:#?}", r.rows);
        let row = |id: Option<i64>| {
            &r.rows
                .iter()
                .find(|r| matches!(&r.key, GroupKey::Provider { provider_id, .. } if *provider_id == id))
                .unwrap()
                .figures
        };
        // Incident 1: the carer of provider 20 went.
        let went = row(Some(20));
        assert_eq!(went.incidents_life_safety, 1);
        assert_eq!(went.attend.measured, 1);
        assert_eq!(went.attend.within, 0, "49 min is over 45");
        assert_eq!(went.attend.within_max, 1);
        assert_eq!(went.attend.target_met, Some(false));
        // 2, 3, 5 by contract (越秀区); device A too.
        let contracted = row(Some(10));
        assert_eq!(
            (
                contracted.incidents_life_safety,
                contracted.incidents_technical
            ),
            (2, 1)
        );
        assert_eq!(contracted.answer.measured, 2);
        assert_eq!(contracted.answer.within, 0);
        assert_eq!(contracted.answer.within_max, 1, "90 s is within 180");
        assert_eq!(contracted.devices.watched, 1);
        assert_eq!(contracted.devices.online, 0);
        let up = contracted.devices.uptime_pct.unwrap();
        assert!((up - 27.0 / 30.0 * 100.0).abs() < 1e-9, "{up}");
        // Nobody contracted for 天河区: the cancelled incident and device B.
        let none = row(None);
        assert_eq!(none.cancelled, 1);
        assert_eq!(none.handled_base, 0);
        assert_eq!(none.handled_pct, None);
        assert_eq!(
            none.answer.measured, 1,
            "cancelled after a claim still answered"
        );
        assert_eq!(none.devices.online_pct, Some(100.0));

        let total = &r.total;
        assert_eq!(total.incidents_life_safety, 4);
        assert_eq!(total.incidents_technical, 1);
        // Handled: 1, 2, 3 resolved; 5 open; 4 cancelled is out.
        assert_eq!((total.handled, total.handled_base), (3, 4));
        assert_eq!(total.handled_pct, Some(75.0));
        assert_eq!(total.answer.measured, 4);
        assert_eq!((total.answer.within, total.answer.within_max), (2, 3));
        assert_eq!(total.answer.within_pct, Some(50.0));
        assert_eq!(total.devices.watched, 2);
        assert_eq!(total.devices.online, 1);
        // Both wellbeing calls were to residents of 越秀区, contracted to provider 10.
        assert_eq!(contracted.wellbeing_checks, 2);
        assert_eq!(went.wellbeing_checks, 0);
        assert_eq!(total.wellbeing_checks, 2);
    }

    #[test]
    fn the_month_under_way_and_one_not_begun() {
        let t = SlaTargets::default();
        // Halfway through November: device A's offline job (three days
        // before the month's end) has not begun.
        let mid = month().start_ms() + 15 * 86_400_000;
        let r = build_report(&data(), month(), Grouping::Provider, &t, mid);
        assert_eq!((r.total.devices.watched, r.total.devices.online), (2, 2));
        assert_eq!(r.total.devices.uptime_pct, Some(100.0));
        assert_eq!(r.period.as_of_ms, mid);
        let r = build_report(
            &data(),
            month(),
            Grouping::Provider,
            &t,
            month().start_ms() - 1,
        );
        assert_eq!(r.total.devices.watched, 0);
        assert_eq!(r.total.devices.uptime_pct, None);
    }

    #[test]
    fn per_category_and_street() {
        let t = SlaTargets::default();
        let r = build_report(&data(), month(), Grouping::Category, &t, month().end_ms());
        let keys: Vec<_> = r.rows.iter().map(|r| r.key.clone()).collect();
        let cat = |c: &str| GroupKey::Category {
            subsidy_category: c.into(),
            category_label: category_label(c),
        };
        assert_eq!(
            keys,
            [
                cat("(none)"),
                cat("advanced_age"),
                cat("destitute"),
                cat("living_alone")
            ]
        );
        assert_eq!(r.rows[3].figures.answer.measured, 2);
        assert_eq!(r.rows[0].figures.devices.watched, 1);
        let j = serde_json::to_value(&r.rows[3]).unwrap();
        assert_eq!(j["subsidy_category"], "living_alone");
        assert_eq!(j["category_label"], "独居");
        assert_eq!(j["answer"]["within"], 1);
        assert_eq!(
            j["month"],
            serde_json::Value::Null,
            "the header is not repeated"
        );
        let r = build_report(&data(), month(), Grouping::Street, &t, month().end_ms());
        // 天河区一街, 越秀区一街, and 越秀区二街 where only a wellbeing call was made.
        assert_eq!(r.rows.len(), 3);
        assert_eq!(r.rows[2].figures.wellbeing_checks, 1);
        assert_eq!(r.rows[2].figures.incidents_life_safety, 0);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["month"], NOV);
        assert_eq!(j["by"], "street");
        assert_eq!(j["rows"][0]["district"], "天河区");
        assert_eq!(j["rows"][0]["street"], "一街");
    }

    #[test]
    fn breaches_of_the_month() {
        let t = SlaTargets::default();
        let b = build_breaches(&data(), month(), &t, month().end_ms());
        let got: Vec<_> = b
            .breaches
            .iter()
            .map(|b| (b.incident_id, b.measure, b.limit_secs, b.why.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    Measure::Attend,
                    45 * 60,
                    "attended after 49 min (limit 45 min)"
                ),
                (2, Measure::Answer, 60, "answered after 90 s (limit 60 s)"),
                (
                    3,
                    Measure::Answer,
                    180,
                    "never answered by an operator (limit 180 s)"
                ),
            ]
        );
        assert_eq!(b.breaches[0].provider.as_deref(), Some("应急援助队"));
        assert_eq!(b.breaches[0].opened_local, "2026-11-01T01:00:00+08:00");
    }

    #[test]
    fn offline_time_is_merged_and_clipped() {
        let s = |a, b: Option<i64>| OfflineSpell {
            device_id: "A".into(),
            opened_at: a,
            ended_at: b,
        };
        let spells = [
            s(0, Some(50)),
            s(40, Some(70)),
            s(90, None),
            s(200, Some(300)),
        ];
        let refs: Vec<_> = spells.iter().collect();
        assert_eq!(offline_ms(&refs, 10, 100), 40 + 20 + 10);
        assert_eq!(offline_ms(&refs, 100, 150), 50);
        assert!(offline_at(&refs, 69));
        assert!(!offline_at(&refs, 70));
        assert!(offline_at(&refs, 10_000));
    }

    #[test]
    fn groupings_parse() {
        for g in [
            Grouping::Provider,
            Grouping::District,
            Grouping::Street,
            Grouping::Category,
        ] {
            assert_eq!(g.as_str().parse::<Grouping>(), Ok(g));
        }
        assert!("client".parse::<Grouping>().is_err());
    }
}
