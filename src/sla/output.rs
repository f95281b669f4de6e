//! Reports as the city takes them: JSON, or CSV for a spreadsheet (RFC 4180,
//! UTF-8, one header line; percentages with two decimals, empty when there
//! is nothing to divide by).

use std::fmt::Write as _;

use super::report::{Breach, BreachList, Figures, GroupKey, Grouping, MonthlyReport};
use super::{Measure, SlaTargets};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a format (json, csv)")]
pub struct BadFormat(pub String);

impl std::str::FromStr for Format {
    type Err = BadFormat;

    fn from_str(s: &str) -> Result<Self, BadFormat> {
        match s {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(BadFormat(s.to_owned())),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
        }
    }
}

/// A text field as a spreadsheet may safely open it: text it would run as a
/// formula (a name typed as `=HYPERLINK(…)`) gets a leading apostrophe.
/// Quoting is the CSV writer's.
fn text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// Rows as CSV: RFC 4180, CRLF line ends, fields quoted when they must be.
fn csv_text(rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for row in rows {
        w.write_record(&row)
            .expect("rows of one length, written to memory");
    }
    let bytes = w.into_inner().expect("flushed to memory");
    String::from_utf8(bytes).expect("UTF-8 in, UTF-8 out")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(String::new, |v| v.to_string())
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.2}"))
}

/// `60s`, `45min`: limits as column names carry them.
fn limit_name(m: Measure, secs: u64) -> String {
    match m {
        Measure::Answer => format!("{secs}s"),
        Measure::Attend if secs.is_multiple_of(60) => format!("{}min", secs / 60),
        Measure::Attend => format!("{secs}s"),
    }
}

fn figure_columns(t: &SlaTargets) -> Vec<String> {
    let mut cols: Vec<String> = [
        "incidents_life_safety",
        "incidents_technical",
        "cancelled",
        "merged",
        "handled",
        "handled_base",
        "handled_pct",
    ]
    .map(str::to_owned)
    .to_vec();
    for (m, verb) in [(Measure::Answer, "answered"), (Measure::Attend, "attended")] {
        let [(inner, _), (outer, _)] = t.tiers(m);
        let (inner, outer) = (limit_name(m, inner), limit_name(m, outer));
        let name = m.as_str();
        cols.extend([
            format!("{name}_measured"),
            format!("{name}_pending"),
            format!("{verb}_within_{inner}"),
            format!("{verb}_within_{inner}_pct"),
            format!("{verb}_within_{outer}"),
            format!("{verb}_within_{outer}_pct"),
            format!("{name}_target_met"),
        ]);
    }
    cols.extend(
        [
            "devices_watched",
            "devices_online",
            "devices_online_pct",
            "device_uptime_pct",
            "wellbeing_checks",
        ]
        .map(str::to_owned),
    );
    cols
}

fn figure_values(f: &Figures) -> Vec<String> {
    let mut v = vec![
        f.incidents_life_safety.to_string(),
        f.incidents_technical.to_string(),
        f.cancelled.to_string(),
        f.merged.to_string(),
        f.handled.to_string(),
        f.handled_base.to_string(),
        pct(f.handled_pct),
    ];
    for s in [&f.answer, &f.attend] {
        v.extend([
            s.measured.to_string(),
            s.pending.to_string(),
            s.within.to_string(),
            pct(s.within_pct),
            s.within_max.to_string(),
            pct(s.within_max_pct),
            opt(s.target_met),
        ]);
    }
    let d = &f.devices;
    v.extend([
        d.watched.to_string(),
        d.online.to_string(),
        pct(d.online_pct),
        pct(d.uptime_pct),
        f.wellbeing_checks.to_string(),
    ]);
    v
}

fn key_columns(by: Grouping) -> &'static [&'static str] {
    match by {
        Grouping::Provider => &["provider_id", "provider"],
        Grouping::District => &["district"],
        Grouping::Street => &["district", "street"],
        Grouping::Category => &["subsidy_category", "category_label"],
    }
}

fn key_values(k: &GroupKey) -> Vec<String> {
    match k {
        GroupKey::Provider {
            provider_id,
            provider,
        } => vec![opt(*provider_id), text(provider)],
        GroupKey::District { district } => vec![text(district)],
        GroupKey::Street { district, street } => vec![text(district), text(street)],
        GroupKey::Category {
            subsidy_category,
            category_label,
        } => vec![text(subsidy_category), text(category_label)],
    }
}

/// The report as CSV: `month`, the group's columns, the figures; the last
/// line, with `(all)` in the group's last column, is the whole city.
pub fn report_csv(r: &MonthlyReport) -> String {
    let keys = key_columns(r.by);
    let mut lines = Vec::with_capacity(r.rows.len() + 2);
    let mut header = vec!["month".to_owned()];
    header.extend(keys.iter().map(|k| (*k).to_owned()));
    header.extend(figure_columns(&r.period.targets));
    lines.push(header);
    for row in &r.rows {
        let mut fields = vec![r.period.month.clone()];
        fields.extend(key_values(&row.key));
        fields.extend(figure_values(&row.figures));
        lines.push(fields);
    }
    let mut fields = vec![r.period.month.clone()];
    fields.extend((1..keys.len()).map(|_| String::new()));
    fields.push("(all)".to_owned());
    fields.extend(figure_values(&r.total));
    lines.push(fields);
    csv_text(lines)
}

const BREACH_COLUMNS: [&str; 20] = [
    "incident_id",
    "opened_local",
    "lane",
    "kind",
    "state",
    "provider_id",
    "provider",
    "district",
    "street",
    "subsidy_category",
    "measure",
    "limit_secs",
    "actual_secs",
    "why",
    "press_to_received_ms",
    "received_to_claimed_ms",
    "claimed_to_dispatched_ms",
    "dispatched_to_accepted_ms",
    "accepted_to_on_scene_ms",
    "received_to_resolved_ms",
];

fn breach_values(b: &Breach) -> Vec<String> {
    let i = &b.intervals;
    vec![
        b.incident_id.to_string(),
        b.opened_local.clone(),
        text(&b.lane),
        text(&b.kind),
        text(&b.state),
        opt(b.provider_id),
        text(b.provider.as_deref().unwrap_or("")),
        text(&b.district),
        text(&b.street),
        text(&b.subsidy_category),
        b.measure.as_str().to_owned(),
        b.limit_secs.to_string(),
        opt(b.actual_secs),
        text(&b.why),
        opt(i.press_to_received_ms),
        opt(i.received_to_claimed_ms),
        opt(i.claimed_to_dispatched_ms),
        opt(i.dispatched_to_accepted_ms),
        opt(i.accepted_to_on_scene_ms),
        opt(i.received_to_resolved_ms),
    ]
}

pub fn breaches_csv(list: &BreachList) -> String {
    csv_text(
        std::iter::once(BREACH_COLUMNS.map(str::to_owned).to_vec())
            .chain(list.breaches.iter().map(breach_values)),
    )
}

/// The report in `format`.
pub fn render_report(r: &MonthlyReport, format: Format) -> String {
    match format {
        Format::Json => json(r),
        Format::Csv => report_csv(r),
    }
}

pub fn render_breaches(list: &BreachList, format: Format) -> String {
    match format {
        Format::Json => json(list),
        Format::Csv => breaches_csv(list),
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|e| {
        // Plain structs of numbers and strings: this cannot fail.
        format!("{{\"error\": \"{e}\"}}")
    });
    let _ = writeln!(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_and_defused() {
        let row = [
            "越秀区",
            "a,b",
            "say \"hi\"",
            "=1+1",
            "-x,y",
            "two\nlines",
            "",
        ]
        .map(text)
        .to_vec();
        assert_eq!(
            csv_text([row.clone(), row]),
            "越秀区,\"a,b\",\"say \"\"hi\"\"\",'=1+1,\"'-x,y\",\"two\nlines\",\r\n".repeat(2)
        );
    }

    #[test]
    fn columns_carry_the_limits() {
        let cols = figure_columns(&SlaTargets::default());
        assert!(
            cols.contains(&"answered_within_60s_pct".to_owned()),
            "{cols:?}"
        );
        assert!(cols.contains(&"answered_within_180s".to_owned()));
        assert!(cols.contains(&"attended_within_45min_pct".to_owned()));
        assert!(cols.contains(&"attended_within_60min".to_owned()));
        let f = Figures::default();
        assert_eq!(figure_values(&f).len(), cols.len());
        assert_eq!(breach_values(&sample_breach()).len(), BREACH_COLUMNS.len());
    }

    fn sample_breach() -> Breach {
        Breach {
            incident_id: 1,
            opened_at: 0,
            opened_local: String::new(),
            lane: String::new(),
            kind: String::new(),
            state: String::new(),
            provider_id: None,
            provider: None,
            district: String::new(),
            street: String::new(),
            subsidy_category: String::new(),
            measure: Measure::Answer,
            limit_secs: 60,
            actual_secs: None,
            why: String::new(),
            intervals: Default::default(),
        }
    }

    #[test]
    fn formats_parse() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }
}
