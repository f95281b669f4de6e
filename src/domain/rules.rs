//! Routing rules: for each kind of event, its priority, what the server does
//! with it, and how long people get before it escalates.
//!
//! The built-in rules follow the domain (an SOS goes to an operator at once
//! and is offered to the nearest carer; a medical alarm also advises a 120
//! hand-off; a low battery is a technical job for the operator queue). A rules
//! file replaces the rule of any kind it names; it is read and checked once,
//! at start, and a rule that would let a life-safety alarm go unseen is
//! refused there rather than discovered during an emergency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pingantong_protocol::{EventKind, Lane};
use serde::{Deserialize, Serialize};

use crate::Escalation;

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("rule for {kind:?}: {why}")]
    Invalid { kind: String, why: String },
}

/// What the server does when an event of a kind arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Open an incident in the operator queue (one per person for life-safety
    /// kinds, one per device and kind otherwise).
    Operator,
    /// Offer the incident to the nearest available carer of the contracted provider.
    OfferCarer,
    /// Mark the incident: the operator should hand it to 120 (ambulance).
    #[serde(rename = "handoff_120")]
    Handoff120,
    /// Mark the incident: the operator should hand it to 110 (police).
    #[serde(rename = "handoff_110")]
    Handoff110,
    /// Tell the resident's family and keyholders, in their order.
    NotifyFamily,
}

/// One kind's rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    priority: Priority,
    actions: Vec<Action>,
    claim_within_secs: Option<u64>,
    remind_every_secs: Option<u64>,
    offer_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    kinds: BTreeMap<String, RuleFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Priority {
    LifeSafety,
    Technical,
    Informational,
}

impl From<Priority> for Lane {
    fn from(p: Priority) -> Lane {
        match p {
            Priority::LifeSafety => Lane::LifeSafety,
            Priority::Technical => Lane::Technical,
            Priority::Informational => Lane::Informational,
        }
    }
}

/// The effective rule of one kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: Lane,
    pub actions: Vec<Action>,
    /// Time limits; `None` takes the server-wide setting.
    pub claim_within_secs: Option<u64>,
    pub remind_every_secs: Option<u64>,
    pub offer_timeout_secs: Option<u64>,
}

impl Rule {
    pub fn has(&self, action: Action) -> bool {
        self.actions.contains(&action)
    }

    /// The emergency service this rule advises, if any.
    pub fn advised_handoff(&self) -> Option<&'static str> {
        if self.has(Action::Handoff120) {
            Some("120")
        } else if self.has(Action::Handoff110) {
            Some("110")
        } else {
            None
        }
    }

    /// This rule's time limits over the server-wide ones.
    pub fn escalation(&self, defaults: Escalation) -> Escalation {
        let ms = |secs: Option<u64>, default: i64| secs.map_or(default, |s| s as i64 * 1000);
        Escalation {
            claim_after_ms: ms(self.claim_within_secs, defaults.claim_after_ms),
            offer_after_ms: ms(self.offer_timeout_secs, defaults.offer_after_ms),
            remind_every_ms: ms(self.remind_every_secs, defaults.remind_every_ms),
        }
    }

    fn built_in(kind: EventKind) -> Rule {
        use Action::*;
        let rule = |priority, actions: &[Action], claim: Option<u64>| Rule {
            priority,
            actions: actions.to_vec(),
            claim_within_secs: claim,
            remind_every_secs: claim,
            offer_timeout_secs: None,
        };
        match kind {
            EventKind::Medical => rule(
                Lane::LifeSafety,
                &[Operator, OfferCarer, Handoff120, NotifyFamily],
                None,
            ),
            // A fall the wearer cannot get up from, a press: someone must go.
            EventKind::Sos | EventKind::Fall => rule(
                Lane::LifeSafety,
                &[Operator, OfferCarer, NotifyFamily],
                None,
            ),
            // Whoever wears the pendant may be without protection: an operator
            // calls them, within the half hour rather than the minute.
            EventKind::LowBattery
            | EventKind::PowerCut
            | EventKind::RemovedFromWrist
            | EventKind::Tamper
            | EventKind::Offline
            | EventKind::MissedTest => rule(Lane::Technical, &[Operator], Some(1800)),
            other => match other.lane() {
                // Codes newer than this server keep the lane their range gives them.
                Lane::LifeSafety => rule(Lane::LifeSafety, &[Operator, OfferCarer], None),
                Lane::Technical => rule(Lane::Technical, &[Operator], Some(1800)),
                Lane::Informational => rule(Lane::Informational, &[], None),
            },
        }
    }
}

/// Every kind a rules file may name (`other_xx` codes follow their range).
pub const KINDS: [EventKind; 13] = [
    EventKind::Sos,
    EventKind::Fall,
    EventKind::Medical,
    EventKind::LowBattery,
    EventKind::PowerCut,
    EventKind::RemovedFromWrist,
    EventKind::Tamper,
    EventKind::Offline,
    EventKind::MissedTest,
    EventKind::PeriodicTest,
    EventKind::PowerRestored,
    EventKind::Heartbeat,
    EventKind::Position,
];

/// The rules in force; cheap to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    by_kind: BTreeMap<String, Rule>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            by_kind: KINDS
                .iter()
                .map(|k| (k.name(), Rule::built_in(*k)))
                .collect(),
        }
    }
}

impl Rules {
    /// The built-in rules, with the file's rules over them.
    pub fn load(file: Option<&Path>) -> Result<Self, RulesError> {
        let Some(path) = file else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            RulesError::Parse { source, .. } => RulesError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|source| RulesError::Parse {
            path: PathBuf::from("(text)"),
            source: Box::new(source),
        })?;
        let mut rules = Self::default();
        for (kind, r) in file.kinds {
            let rule = Rule {
                priority: r.priority.into(),
                actions: {
                    let mut a = r.actions;
                    a.sort();
                    a.dedup();
                    a
                },
                claim_within_secs: r.claim_within_secs,
                remind_every_secs: r.remind_every_secs,
                offer_timeout_secs: r.offer_timeout_secs,
            };
            check(&kind, &rule)?;
            rules.by_kind.insert(kind, rule);
        }
        Ok(rules)
    }

    /// The rule for an event kind.
    pub fn for_kind(&self, kind: EventKind) -> Rule {
        self.by_kind
            .get(&kind.name())
            .cloned()
            .unwrap_or_else(|| Rule::built_in(kind))
    }

    /// The rule for a kind stored by name (an incident's kind).
    pub fn for_name(&self, kind: &str) -> Rule {
        match EventKind::from_name(kind) {
            Some(k) => self.for_kind(k),
            // Not a kind of this server's: treat as life-safety, never as nothing.
            None => Rule::built_in(EventKind::Sos),
        }
    }

    pub fn priority(&self, kind: EventKind) -> Lane {
        if kind == EventKind::Cancel {
            return Lane::LifeSafety;
        }
        self.by_kind
            .get(&kind.name())
            .map_or_else(|| kind.lane(), |r| r.priority)
    }

    /// The names of every kind handled in the life-safety lane (cancels and
    /// life-safety codes newer than this server included).
    pub fn life_safety_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = KINDS
            .iter()
            .copied()
            .chain([EventKind::Cancel])
            .chain((0..0x10).map(EventKind::Other))
            .filter(|k| self.priority(*k) == Lane::LifeSafety)
            .map(|k| k.name())
            .collect();
        kinds.sort();
        kinds
    }

    /// Whether an event of this kind needs the incident stage after its commit.
    pub fn needs_incident_stage(&self, kind: EventKind) -> bool {
        kind == EventKind::Cancel
            || clears(kind).is_some()
            || self.by_kind.get(&kind.name()).map_or_else(
                || Rule::built_in(kind).has(Action::Operator),
                |r| r.has(Action::Operator),
            )
    }

    /// One line per kind, for `pingantong rules`.
    pub fn describe(&self, defaults: Escalation) -> String {
        let mut out =
            String::from("kind                 priority       claim  remind  offer  actions\n");
        for (kind, rule) in &self.by_kind {
            let e = rule.escalation(defaults);
            let actions: Vec<String> = rule
                .actions
                .iter()
                .map(|a| {
                    serde_json::to_value(a)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                })
                .collect();
            out.push_str(&format!(
                "{kind:<20} {:<14} {:>4}s {:>6}s {:>5}s  {}\n",
                rule.priority.as_str(),
                e.claim_after_ms / 1000,
                e.remind_every_ms / 1000,
                e.offer_after_ms / 1000,
                if actions.is_empty() {
                    "(stored only)".to_owned()
                } else {
                    actions.join(", ")
                }
            ));
        }
        out
    }
}

/// The trouble an event reports over, whose open job it closes.
pub fn clears(kind: EventKind) -> Option<EventKind> {
    match kind {
        EventKind::BackOnline => Some(EventKind::Offline),
        EventKind::PowerRestored => Some(EventKind::PowerCut),
        EventKind::PeriodicTest => Some(EventKind::MissedTest),
        _ => None,
    }
}

/// Refuse rules that could leave a person without help, or make no sense.
fn check(kind: &str, rule: &Rule) -> Result<(), RulesError> {
    let invalid = |why: &str| {
        Err(RulesError::Invalid {
            kind: kind.to_owned(),
            why: why.to_owned(),
        })
    };
    if kind == "cancel" {
        return invalid("a cancel always follows the incident it cancels; it takes no rule");
    }
    if kind == "back_online" {
        return invalid("back_online closes the offline job; it takes no rule");
    }
    let Some(event) = KINDS.iter().find(|k| k.name() == kind) else {
        let known: Vec<String> = KINDS.iter().map(|k| k.name()).collect();
        return invalid(&format!("unknown kind; known kinds: {}", known.join(", ")));
    };
    if event.lane() == Lane::LifeSafety {
        if rule.priority != Lane::LifeSafety {
            return invalid("a person's call for help stays life_safety");
        }
        if !rule.has(Action::Operator) {
            return invalid(
                "a person's call for help must reach an operator (action \"operator\")",
            );
        }
    }
    if !rule.has(Action::Operator) && !rule.actions.is_empty() {
        return invalid(
            "offers, hand-offs and family notices belong to an incident: add \"operator\"",
        );
    }
    if rule.has(Action::Handoff120) && rule.has(Action::Handoff110) {
        return invalid("advise one emergency service, not both");
    }
    for (name, secs) in [
        ("claim_within_secs", rule.claim_within_secs),
        ("remind_every_secs", rule.remind_every_secs),
        ("offer_timeout_secs", rule.offer_timeout_secs),
    ] {
        if let Some(s) = secs
            && !(1..=86_400).contains(&s)
        {
            return invalid(&format!("{name} must be between 1 and 86400"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        Rules::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn built_in_rules_follow_the_domain() {
        let r = Rules::default();
        let sos = r.for_kind(EventKind::Sos);
        assert_eq!(sos.priority, Lane::LifeSafety);
        assert!(sos.has(Action::Operator) && sos.has(Action::OfferCarer));
        assert!(sos.has(Action::NotifyFamily));
        assert_eq!(sos.advised_handoff(), None);
        assert_eq!(
            r.for_kind(EventKind::Medical).advised_handoff(),
            Some("120")
        );
        let battery = r.for_kind(EventKind::LowBattery);
        assert_eq!(battery.priority, Lane::Technical);
        assert_eq!(battery.actions, vec![Action::Operator]);
        assert!(!r.needs_incident_stage(EventKind::Heartbeat));
        assert!(r.needs_incident_stage(EventKind::Cancel));
        assert!(r.needs_incident_stage(EventKind::Tamper));
        assert!(r.needs_incident_stage(EventKind::Offline));
        // Returns close the job their trouble opened.
        assert!(r.needs_incident_stage(EventKind::BackOnline));
        assert!(r.needs_incident_stage(EventKind::PowerRestored));
        assert_eq!(clears(EventKind::BackOnline), Some(EventKind::Offline));
        assert_eq!(r.priority(EventKind::Offline), Lane::Technical);
        let ls = r.life_safety_kinds();
        for k in ["sos", "fall", "medical", "cancel", "other_05"] {
            assert!(ls.contains(&k.to_owned()), "{k} in {ls:?}");
        }
        assert!(!ls.contains(&"low_battery".to_owned()));
        // A code newer than the server keeps a safe lane.
        assert_eq!(r.priority(EventKind::Other(0x05)), Lane::LifeSafety);
        assert!(r.for_kind(EventKind::Other(0x05)).has(Action::Operator));
        assert!(!r.needs_incident_stage(EventKind::Other(0x50)));
        // An incident of a kind this server cannot name is still somebody's emergency.
        assert!(r.for_name("from_a_newer_server").has(Action::Operator));
    }

    #[test]
    fn a_file_replaces_the_rules_it_names() {
        let r = Rules::parse(
            "[kinds.removed_from_wrist]\npriority = \"life_safety\"\n\
             actions = [\"operator\", \"offer_carer\", \"operator\"]\nclaim_within_secs = 30\n\n\
             [kinds.low_battery]\npriority = \"informational\"\nactions = []\n",
        )
        .unwrap();
        let wrist = r.for_kind(EventKind::RemovedFromWrist);
        assert_eq!(wrist.priority, Lane::LifeSafety);
        assert_eq!(wrist.actions, vec![Action::Operator, Action::OfferCarer]);
        assert_eq!(r.priority(EventKind::RemovedFromWrist), Lane::LifeSafety);
        let e = wrist.escalation(Escalation::default());
        assert_eq!(e.claim_after_ms, 30_000);
        assert_eq!(e.offer_after_ms, Escalation::default().offer_after_ms);
        assert!(!r.needs_incident_stage(EventKind::LowBattery));
        // Kinds the file does not name keep their built-in rule.
        assert_eq!(
            r.for_kind(EventKind::Sos),
            Rules::default().for_kind(EventKind::Sos)
        );
    }

    #[test]
    fn rules_that_would_leave_someone_alone_are_refused() {
        let e = invalid("[kinds.sos]\npriority = \"technical\"\nactions = [\"operator\"]\n");
        assert!(
            e.contains("\"sos\"") && e.contains("stays life_safety"),
            "{e}"
        );
        let e = invalid("[kinds.fall]\npriority = \"life_safety\"\nactions = [\"offer_carer\"]\n");
        assert!(e.contains("must reach an operator"), "{e}");
        let e =
            invalid("[kinds.tamper]\npriority = \"technical\"\nactions = [\"notify_family\"]\n");
        assert!(e.contains("add \"operator\""), "{e}");
        let e = invalid(
            "[kinds.medical]\npriority = \"life_safety\"\n\
             actions = [\"operator\", \"handoff_120\", \"handoff_110\"]\n",
        );
        assert!(e.contains("one emergency service"), "{e}");
        let e = invalid(
            "[kinds.sos]\npriority = \"life_safety\"\nactions = [\"operator\"]\nclaim_within_secs = 0\n",
        );
        assert!(e.contains("claim_within_secs"), "{e}");
        let e = invalid("[kinds.cancel]\npriority = \"life_safety\"\nactions = []\n");
        assert!(e.contains("follows the incident"), "{e}");
        let e = invalid("[kinds.smoke]\npriority = \"life_safety\"\nactions = [\"operator\"]\n");
        assert!(
            e.contains("unknown kind") && e.contains("removed_from_wrist"),
            "{e}"
        );
        let e = invalid("[kinds.sos]\npriority = \"life_safety\"\nactions = [\"call_mum\"]\n");
        assert!(e.contains("call_mum") && e.contains("notify_family"), "{e}");
        let e = invalid("[kinds.sos]\npriority = \"urgent\"\nactions = [\"operator\"]\n");
        assert!(e.contains("urgent"), "{e}");
        let e = invalid("[kind.sos]\n");
        assert!(e.contains("kind"), "{e}");
    }

    #[test]
    fn the_example_rules_file_is_the_built_in_rules() {
        let text = include_str!("../../ops/rules.example.toml");
        assert_eq!(Rules::parse(text).unwrap(), Rules::default());
    }
}
