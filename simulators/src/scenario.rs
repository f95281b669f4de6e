//! A fleet's plan: phases with their rates and mass disconnects, read from a TOML scenario file.

use std::time::Duration;

use pingantong_protocol::EventKind;
use serde::Deserialize;

/// How the pendants that do not hold a connection report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    /// Every pendant keeps one connection open (and reconnects when it drops).
    Persistent,
    /// Connect, send, wait for the ACK, close — as many GPRS trackers do.
    PerReport,
}

/// A scenario file as written. Fleet-level keys are defaults that command-line flags override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub pendants: Option<usize>,
    pub protocol: Option<String>,
    pub heartbeat_secs: Option<f64>,
    pub connections: Option<ConnectionMode>,
    /// The first `persistent` pendants hold connections; the rest report per connection.
    pub persistent: Option<usize>,
    #[serde(rename = "phase", default)]
    pub phases: Vec<PhaseSpec>,
}

/// One `[[phase]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    pub name: String,
    pub secs: f64,
    /// Presses (SOS, one in ten a fall) per second across the fleet.
    #[serde(default)]
    pub alarm_rate: f64,
    /// Technical events (low battery) per second across the fleet.
    #[serde(default)]
    pub technical_rate: f64,
    /// At the phase's start every persistent pendant drops its connection at once.
    #[serde(default)]
    pub disconnect: bool,
    /// Each dropped pendant reconnects at a uniformly random time in [0, T) after the drop.
    #[serde(default)]
    pub reconnect_within_secs: f64,
    /// The event (an `EventKind` name, e.g. "power_restored") each pendant reports on reconnecting.
    pub report_on_reconnect: Option<String>,
}

/// A mass disconnect at a phase's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Storm {
    pub reconnect_within: Duration,
    pub report: Option<EventKind>,
}

/// A validated phase: where it starts on the run's clock and what happens in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub name: String,
    pub start: Duration,
    pub secs: Duration,
    pub alarm_rate: f64,
    pub technical_rate: f64,
    pub storm: Option<Storm>,
}

impl Phase {
    pub fn end(&self) -> Duration {
        self.start + self.secs
    }
}

/// What a fleet does over the run, beyond [`crate::fleet::FleetConfig`].
#[derive(Debug, Clone)]
pub struct Plan {
    pub phases: Vec<Phase>,
    /// Pendants with an index below this hold a connection; the others report per connection.
    pub persistent: usize,
    /// Spread source addresses over this many loopback addresses (0: let the kernel choose).
    pub source_spread: usize,
    /// Sockets the per-report pendants may hold open at once.
    pub per_report_sockets: usize,
}

impl Plan {
    /// One phase with fixed rates and every pendant holding a connection.
    pub fn single(
        duration: Duration,
        alarm_rate: f64,
        technical_rate: f64,
        pendants: usize,
    ) -> Self {
        Self {
            phases: vec![Phase {
                name: "run".into(),
                start: Duration::ZERO,
                secs: duration,
                alarm_rate,
                technical_rate,
                storm: None,
            }],
            persistent: pendants,
            source_spread: 0,
            per_report_sockets: 1024,
        }
    }

    /// The same plan with every rate times `share` (a part of the fleet's load).
    pub fn scaled(&self, share: f64) -> Self {
        let mut out = self.clone();
        for p in &mut out.phases {
            p.alarm_rate *= share;
            p.technical_rate *= share;
        }
        out
    }

    /// How long pendants press and report.
    pub fn total(&self) -> Duration {
        self.phases.last().map(Phase::end).unwrap_or_default()
    }

    /// The index of the phase running at `t` on the run's clock (the last one after the end).
    pub fn phase_at(&self, t: Duration) -> usize {
        self.phases
            .iter()
            .position(|p| t < p.end())
            .unwrap_or(self.phases.len().saturating_sub(1))
    }

    /// The phase with a mass disconnect, if any.
    pub fn storm(&self) -> Option<(usize, &Storm)> {
        self.phases
            .iter()
            .enumerate()
            .find_map(|(i, p)| p.storm.as_ref().map(|s| (i, s)))
    }
}

impl ScenarioFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The phases laid end to end on the run's clock, checked.
    pub fn phases(&self) -> Result<Vec<Phase>, String> {
        if self.phases.is_empty() {
            return Err("a scenario needs at least one [[phase]]".into());
        }
        let mut start = Duration::ZERO;
        let mut out = Vec::with_capacity(self.phases.len());
        for p in &self.phases {
            let what = |msg: &str| format!("phase {:?}: {msg}", p.name);
            if !(p.secs.is_finite() && p.secs > 0.0 && p.secs <= 86_400.0) {
                return Err(what("secs must be in (0, 86400]"));
            }
            for rate in [p.alarm_rate, p.technical_rate] {
                if !(rate.is_finite() && rate >= 0.0) {
                    return Err(what("rates must be finite and not negative"));
                }
            }
            if !p.disconnect && (p.reconnect_within_secs != 0.0 || p.report_on_reconnect.is_some())
            {
                return Err(what(
                    "reconnect_within_secs and report_on_reconnect need disconnect = true",
                ));
            }
            if !(p.reconnect_within_secs.is_finite()
                && (0.0..=3_600.0).contains(&p.reconnect_within_secs))
            {
                return Err(what("reconnect_within_secs must be in [0, 3600]"));
            }
            let report = match &p.report_on_reconnect {
                None => None,
                Some(name) => match EventKind::from_name(name) {
                    Some(k)
                        if !matches!(
                            k,
                            EventKind::Offline | EventKind::BackOnline | EventKind::MissedTest
                        ) =>
                    {
                        Some(k)
                    }
                    _ => {
                        return Err(what(&format!(
                            "report_on_reconnect {name:?} is not a device event"
                        )));
                    }
                },
            };
            let secs = Duration::from_secs_f64(p.secs);
            out.push(Phase {
                name: p.name.clone(),
                start,
                secs,
                alarm_rate: p.alarm_rate,
                technical_rate: p.technical_rate,
                storm: p.disconnect.then(|| Storm {
                    reconnect_within: Duration::from_secs_f64(p.reconnect_within_secs),
                    report,
                }),
            });
            start += secs;
        }
        if out.iter().filter(|p| p.storm.is_some()).count() > 1 {
            return Err("at most one phase may disconnect the fleet".into());
        }
        if out[0].storm.is_some() {
            return Err(
                "the first phase cannot disconnect: the fleet has not connected yet".into(),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORM: &str = r#"
        pendants = 2000
        protocol = "native"
        heartbeat_secs = 30
        connections = "per-report"
        persistent = 500

        [[phase]]
        name = "calm"
        secs = 10
        alarm_rate = 2

        [[phase]]
        name = "power cut"
        secs = 20.5
        alarm_rate = 10
        technical_rate = 100
        disconnect = true
        reconnect_within_secs = 20
        report_on_reconnect = "power_restored"
    "#;

    #[test]
    fn a_storm_scenario_lays_its_phases_end_to_end() {
        let s = ScenarioFile::parse(STORM).unwrap();
        assert_eq!(s.pendants, Some(2000));
        assert_eq!(s.connections, Some(ConnectionMode::PerReport));
        assert_eq!(s.persistent, Some(500));
        let phases = s.phases().unwrap();
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[1].start, Duration::from_secs(10));
        assert_eq!(phases[1].end(), Duration::from_secs_f64(30.5));
        assert_eq!(
            phases[1].storm,
            Some(Storm {
                reconnect_within: Duration::from_secs(20),
                report: Some(EventKind::PowerRestored),
            })
        );
        let plan = Plan {
            phases,
            ..Plan::single(Duration::ZERO, 0.0, 0.0, 1)
        };
        assert_eq!(plan.total(), Duration::from_secs_f64(30.5));
        assert_eq!(plan.phase_at(Duration::ZERO), 0);
        assert_eq!(plan.phase_at(Duration::from_secs(10)), 1);
        assert_eq!(plan.phase_at(Duration::from_secs(99)), 1);
        assert_eq!(plan.storm().map(|(i, _)| i), Some(1));
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |text: &str| {
            ScenarioFile::parse(text)
                .and_then(|s| s.phases())
                .unwrap_err()
        };
        assert!(bad("pendants = 1").contains("at least one"));
        assert!(bad("[[phase]]\nname = \"x\"\nsecs = 1\nalarm_rat = 2").contains("alarm_rat"));
        assert!(bad("[[phase]]\nname = \"x\"\nsecs = 0").contains("secs"));
        assert!(bad("[[phase]]\nname = \"x\"\nsecs = 1\nalarm_rate = -1").contains("rates"));
        assert!(
            bad("[[phase]]\nname = \"x\"\nsecs = 1\nreconnect_within_secs = 3")
                .contains("disconnect")
        );
        assert!(
            bad("[[phase]]\nname = \"x\"\nsecs = 1\ndisconnect = true").contains("first phase")
        );
        let two = "[[phase]]\nname = \"a\"\nsecs = 1\n[[phase]]\nname = \"b\"\nsecs = 1\ndisconnect = true\n\
                   report_on_reconnect = \"sunshine\"";
        assert!(bad(two).contains("sunshine"));
        assert!(
            bad("connections = \"sometimes\"\n[[phase]]\nname = \"a\"\nsecs = 1")
                .contains("sometimes")
        );
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let s =
                ScenarioFile::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            s.phases()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 4, "calm, morning-peak, storm, flood");
    }
}
