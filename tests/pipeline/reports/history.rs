//! A month of incident history for the report tests: a small city, incidents
//! generated with a seeded RNG (and a few made by hand for the edge cases),
//! imported through the store, and the figures counted again from what was
//! generated — plain Rust over the generator's own record, not the SLA code.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pingantong::domain::{Action, State};
use pingantong::sla::{Grouping, Measure};
use pingantong::store::{
    Db, ImportedDispatch, ImportedEvent, ImportedIncident, NewCarer, NewClient, NewDevice,
    NewProvider,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::helpers::unique;

pub const MONTH: &str = "2025-11";
/// 2025-11-01T00:00:00+08:00 and 2025-12-01T00:00:00+08:00 (ms since the epoch),
/// worked out by hand: the reports' months are China Standard Time months.
pub const NOV: i64 = 1_761_926_400_000;
pub const DEC: i64 = 1_764_518_400_000;
pub const SEC: i64 = 1000;
pub const MIN: i64 = 60 * SEC;
pub const HOUR: i64 = 60 * MIN;

pub const STREETS: [(&str, &str); 5] = [
    ("越秀区", "北京街"),
    ("越秀区", "大东街"),
    ("天河区", "石牌街"),
    ("天河区", "林和街"),
    // No provider is contracted here.
    ("海珠区", "南华西街"),
];
pub const CATEGORIES: [Option<&str>; 5] = [
    Some("destitute"),
    Some("advanced_age"),
    Some("living_alone"),
    Some("special_contribution"),
    None,
];
pub const SECRET_NOTES: &str = "高血压；房颤";

pub struct Client {
    pub id: i64,
    pub device: String,
    pub district: &'static str,
    pub street: &'static str,
    pub category: Option<&'static str>,
    /// The provider contracted for the address, by this test's own table.
    pub contracted: Option<i64>,
}

pub struct World {
    pub clients: Vec<Client>,
    /// Carers of each provider; the last provider is everyone's fallback.
    pub carers: HashMap<i64, Vec<i64>>,
    pub fallback: i64,
}

/// Providers: one for 越秀区, one for 北京街 only (a street contract wins), one
/// for 天河区, and a fallback for both districts; two carers each.
pub async fn seed_world(db: &Db, rng: &mut StdRng, clients: usize) -> World {
    let provider = |name: &str, coverage: Vec<(&str, Option<&str>)>, rank| NewProvider {
        name: name.into(),
        service_types: "home_visit".into(),
        capacity: 0,
        coverage: coverage
            .into_iter()
            .map(|(d, s)| (d.to_owned(), s.map(str::to_owned)))
            .collect(),
        rank,
    };
    let yuexiu = db
        .insert_provider(&provider("越秀区颐康中心", vec![("越秀区", None)], 0))
        .await
        .unwrap();
    let beijing = db
        .insert_provider(&provider(
            "北京街长者服务站",
            vec![("越秀区", Some("北京街"))],
            3,
        ))
        .await
        .unwrap();
    let tianhe = db
        .insert_provider(&provider("天河区居家养老", vec![("天河区", None)], 0))
        .await
        .unwrap();
    let fallback = db
        .insert_provider(&provider(
            "应急援助队",
            vec![("越秀区", None), ("天河区", None)],
            9,
        ))
        .await
        .unwrap();
    let mut carers = HashMap::new();
    for p in [yuexiu, beijing, tianhe, fallback] {
        for _ in 0..2 {
            let id = db
                .insert_carer(&NewCarer {
                    provider_id: p,
                    name: "carer".into(),
                    phone: String::new(),
                    lat: 23.13,
                    lon: 113.26,
                    on_duty: true,
                })
                .await
                .unwrap();
            carers.entry(p).or_insert_with(Vec::new).push(id);
        }
    }
    let mut out = Vec::new();
    for i in 0..clients {
        let (district, street) = STREETS[i % STREETS.len()];
        let category = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
        let id = db
            .insert_client(&NewClient {
                name: format!("住户{i}"),
                address: format!("{district}{street} {i}号"),
                district: district.into(),
                street: street.into(),
                lat: None,
                lon: None,
                language: "yue".into(),
                medical_notes: SECRET_NOTES.into(),
                medications: "华法林 3mg".into(),
                allergies: String::new(),
                key_safe: String::new(),
                birth_year: Some(1940),
                subsidy_category: category.map(str::to_owned),
            })
            .await
            .unwrap();
        let device = unique("R").replace('_', "-");
        db.upsert_device(&NewDevice {
            id: device.clone(),
            protocol: "native".into(),
            secret: b"secret".to_vec(),
            client_id: Some(id),
        })
        .await
        .unwrap();
        let contracted = match (district, street) {
            ("越秀区", "北京街") => Some(beijing),
            ("越秀区", _) => Some(yuexiu),
            ("天河区", _) => Some(tianhe),
            _ => None,
        };
        out.push(Client {
            id,
            device,
            district,
            street,
            category,
            contracted,
        });
    }
    World {
        clients: out,
        carers,
        fallback,
    }
}

/// One step of a generated incident.
#[derive(Clone, Copy)]
pub enum Step {
    Claim,
    Contact,
    /// An operator sends help (the incident moves to *dispatched*).
    Dispatch,
    /// An offer to this carer of this provider.
    Offer(i64, i64),
    /// Answers to the n-th offer.
    Decline(usize),
    Accept(usize),
    Arrive(usize),
    Resolve,
    Close(bool),
    Cancel,
    /// The device reports its trouble over (technical jobs).
    Cleared,
    Merge,
}

/// What was generated, as this test knows it.
pub struct Truth {
    /// Index into `World::clients`.
    pub client: usize,
    pub life_safety: bool,
    pub received: i64,
    pub state: State,
    pub outcome: bool,
    pub claimed: Option<i64>,
    pub cancelled: Option<i64>,
    /// (time, provider) of the first acceptance and the first arrival.
    pub accepted: Option<(i64, i64)>,
    pub arrived: Option<(i64, i64)>,
}

impl Truth {
    pub fn in_month(&self, opened: i64) -> bool {
        (NOV..DEC).contains(&opened)
    }

    /// `None`: not in the answer figures; `Some(None)`: never answered.
    pub fn answer(&self) -> Option<Option<i64>> {
        if !self.life_safety || self.state == State::Merged {
            return None;
        }
        let done = self
            .claimed
            .or(self.cancelled.filter(|_| self.state == State::Cancelled));
        Some(done.map(|t| t - self.received))
    }

    /// `None`: not in the attend figures; `Some(None)`: no arrival.
    pub fn attend(&self) -> Option<Option<i64>> {
        if !self.life_safety || matches!(self.state, State::Merged | State::Cancelled) {
            return None;
        }
        let (accepted, _) = self.accepted?;
        Some(self.arrived.map(|(t, _)| t - accepted))
    }

    pub fn handled(&self) -> Option<bool> {
        match self.state {
            State::Cancelled | State::Merged => None,
            State::Resolved => Some(true),
            State::Closed => Some(self.outcome),
            _ => Some(false),
        }
    }

    pub fn provider(&self, w: &World) -> Option<i64> {
        self.arrived
            .or(self.accepted)
            .map(|(_, p)| p)
            .or(w.clients[self.client].contracted)
    }
}

pub struct Story {
    pub source: String,
    pub client: usize,
    pub kind: &'static str,
    pub life_safety: bool,
    pub device_time: Option<i64>,
    pub received: i64,
    pub opened: i64,
    pub steps: Vec<(i64, Step)>,
}

impl Story {
    pub fn new(source: String, client: usize, kind: &'static str, received: i64) -> Self {
        Self {
            source,
            client,
            kind,
            life_safety: !matches!(kind, "low_battery" | "offline"),
            device_time: None,
            received,
            opened: received + 150,
            steps: Vec::new(),
        }
    }

    pub fn at(mut self, at: i64, step: Step) -> Self {
        self.steps.push((at, step));
        self
    }

    /// The incident as the store imports it, and what the test knows of it.
    pub fn build(mut self, w: &World) -> (ImportedIncident, Truth) {
        self.steps.sort_by_key(|s| s.0);
        let c = &w.clients[self.client];
        let mut events = vec![ImportedEvent {
            at: self.opened,
            actor: "system".into(),
            action: "opened".into(),
            from_state: None,
            to_state: Some("queued".into()),
            detail: String::new(),
        }];
        let mut t = Truth {
            client: self.client,
            life_safety: self.life_safety,
            received: self.received,
            state: State::Queued,
            outcome: false,
            claimed: None,
            cancelled: None,
            accepted: None,
            arrived: None,
        };
        let mut dispatches: Vec<ImportedDispatch> = Vec::new();
        let mut closed_at = None;
        for (at, step) in self.steps {
            let mut note = |actor: String, action: &str| {
                events.push(ImportedEvent {
                    at,
                    actor,
                    action: action.into(),
                    from_state: None,
                    to_state: None,
                    detail: String::new(),
                })
            };
            let action = match step {
                Step::Claim => {
                    t.claimed.get_or_insert(at);
                    Some(Action::Claim)
                }
                Step::Contact => Some(Action::Contact),
                Step::Dispatch => Some(Action::Dispatch),
                Step::Offer(carer, provider) => {
                    note("system".into(), "carer_offered");
                    dispatches.push(ImportedDispatch {
                        carer_id: carer,
                        provider_id: provider,
                        state: "offered".into(),
                        fallback: Some(provider) != c.contracted,
                        offered_at: at,
                        accepted_at: None,
                        arrived_at: None,
                    });
                    None
                }
                Step::Decline(n) => {
                    note(
                        format!("carer:{}", dispatches[n].carer_id),
                        "carer_declined",
                    );
                    dispatches[n].state = "declined".into();
                    None
                }
                Step::Accept(n) => {
                    note(
                        format!("carer:{}", dispatches[n].carer_id),
                        "carer_accepted",
                    );
                    dispatches[n].state = "accepted".into();
                    dispatches[n].accepted_at = Some(at);
                    t.accepted.get_or_insert((at, dispatches[n].provider_id));
                    Some(Action::CarerAccept)
                }
                Step::Arrive(n) => {
                    note(format!("carer:{}", dispatches[n].carer_id), "carer_arrived");
                    dispatches[n].state = "arrived".into();
                    dispatches[n].arrived_at = Some(at);
                    t.arrived.get_or_insert((at, dispatches[n].provider_id));
                    Some(Action::CarerArrive)
                }
                Step::Resolve => Some(Action::Resolve),
                Step::Close(outcome) => {
                    t.outcome = outcome;
                    closed_at = Some(at);
                    Some(Action::Close)
                }
                Step::Cancel | Step::Cleared => {
                    t.cancelled.get_or_insert(at);
                    closed_at = Some(at);
                    Some(Action::Cancel)
                }
                Step::Merge => {
                    closed_at = Some(at);
                    Some(Action::Merge)
                }
            };
            if let Some(action) = action {
                let from = t.state;
                t.state = from
                    .apply(action)
                    .unwrap_or_else(|e| panic!("{}: {e}", self.source));
                let (actor, name) = match (step, action) {
                    (Step::Cleared, _) => ("device".to_owned(), "cleared"),
                    (_, Action::CarerAccept | Action::CarerArrive) => {
                        ("carer:1".to_owned(), action.as_str())
                    }
                    _ => ("operator:wang".to_owned(), action.as_str()),
                };
                events.push(ImportedEvent {
                    at,
                    actor,
                    action: name.into(),
                    from_state: Some(from.as_str().into()),
                    to_state: Some(t.state.as_str().into()),
                    detail: String::new(),
                });
            }
        }
        let incident = ImportedIncident {
            source_ref: self.source,
            client_id: Some(c.id),
            device_id: c.device.clone(),
            kind: self.kind.into(),
            lane: if self.life_safety {
                "life_safety"
            } else {
                "technical"
            }
            .into(),
            state: t.state,
            outcome: t.outcome.then(|| "visited".to_owned()),
            claimed_by: t.claimed.map(|_| "operator:wang".to_owned()),
            device_time: self.device_time,
            received_at: self.received,
            opened_at: self.opened,
            closed_at,
            events,
            dispatches,
        };
        (incident, t)
    }
}

/// A carer of the provider that would be asked for this client: the
/// contracted one, else the fallback (nobody for an address without a contract).
pub fn carer_for(w: &World, client: usize, rng: &mut StdRng) -> Option<(i64, i64)> {
    let c = &w.clients[client];
    let p = c.contracted?;
    let p = if rng.random_bool(0.15) { w.fallback } else { p };
    let carers = &w.carers[&p];
    Some((carers[rng.random_range(0..carers.len())], p))
}

/// Mostly quick, some between the limits, some over both (ms).
pub fn draw(rng: &mut StdRng, quick: (i64, i64), slow: (i64, i64), late: (i64, i64)) -> i64 {
    let range = match rng.random_range(0..100) {
        0..85 => quick,
        85..93 => slow,
        _ => late,
    };
    rng.random_range(range.0..=range.1)
}

pub fn answer_ms(rng: &mut StdRng) -> i64 {
    draw(
        rng,
        (3 * SEC, 60 * SEC),
        (60 * SEC + 1, 180 * SEC),
        (180 * SEC + 1, 400 * SEC),
    )
}

pub fn attend_ms(rng: &mut StdRng) -> i64 {
    draw(
        rng,
        (5 * MIN, 45 * MIN),
        (45 * MIN + 1, 60 * MIN),
        (60 * MIN + 1, 90 * MIN),
    )
}

/// A random life-safety incident received at `t`.
pub fn random_emergency(w: &World, rng: &mut StdRng, n: usize, t: i64) -> Story {
    let client = rng.random_range(0..w.clients.len());
    let kind = if rng.random_bool(0.7) { "sos" } else { "fall" };
    let mut s = Story::new(format!("gen-{n}"), client, kind, t);
    if rng.random_bool(0.7) {
        s.device_time = Some(t - rng.random_range(200..5_000));
    }
    let claim = t + answer_ms(rng);
    let offer = s.opened + rng.random_range(200..2_000);
    let carer = carer_for(w, client, rng);
    // Help goes out: maybe a decline first, then an accept and (maybe) an arrival.
    let send = |mut s: Story, rng: &mut StdRng, arrive: bool| -> (Story, i64) {
        let Some((carer, provider)) = carer else {
            return (s, offer);
        };
        let mut at = offer;
        let mut n = 0;
        s = s.at(at, Step::Offer(carer, provider));
        if rng.random_bool(0.15) {
            at += rng.random_range(5 * SEC..90 * SEC);
            s = s.at(at, Step::Decline(0));
            at += 200;
            let other = w.carers[&w.fallback][0];
            s = s.at(at, Step::Offer(other, w.fallback));
            n = 1;
        }
        at += rng.random_range(10 * SEC..120 * SEC);
        s = s.at(at, Step::Accept(n));
        if arrive {
            at += attend_ms(rng);
            s = s.at(at, Step::Arrive(n));
        }
        (s, at)
    };
    match rng.random_range(0..100) {
        // The whole way: claimed, a carer goes, resolved, mostly closed.
        0..55 => {
            let (s, at) = send(s.at(claim, Step::Claim), rng, true);
            let done = at.max(claim) + 10 * MIN;
            let s = s.at(done, Step::Resolve);
            if rng.random_bool(0.9) {
                s.at(done + 5 * MIN, Step::Close(true))
            } else {
                s
            }
        }
        // Nobody claimed it; the carer went and resolved it.
        55..63 => match carer {
            Some(_) => {
                let (s, at) = send(s, rng, true);
                s.at(at + 10 * MIN, Step::Resolve)
            }
            None => s.at(t + 20 * MIN, Step::Cancel),
        },
        // A false alarm, cancelled by the operator (claimed or not), maybe
        // after a carer said yes.
        63..73 => {
            let claimed = rng.random_bool(0.8);
            let s = if claimed { s.at(claim, Step::Claim) } else { s };
            let (s, at) = if rng.random_bool(0.5) {
                send(s, rng, false)
            } else {
                (s, offer)
            };
            s.at(at.max(claim) + MIN, Step::Cancel)
        }
        // Settled on the telephone; closed with an outcome, or not.
        73..83 => s
            .at(claim, Step::Claim)
            .at(claim + MIN, Step::Contact)
            .at(claim + 5 * MIN, Step::Resolve)
            .at(claim + 6 * MIN, Step::Close(rng.random_bool(0.8))),
        // A repeat of another incident.
        83..88 => {
            let s = if rng.random_bool(0.5) {
                s.at(claim, Step::Claim)
            } else {
                s
            };
            s.at(claim + 10 * SEC, Step::Merge)
        }
        // A carer accepted but no arrival was ever recorded.
        88..94 => {
            let (s, at) = send(s.at(claim, Step::Claim), rng, false);
            let done = at.max(claim) + 40 * MIN;
            s.at(done, Step::Resolve).at(done + MIN, Step::Close(true))
        }
        // Still open: claimed, in contact or with help sent by the operator.
        _ => {
            let s = s.at(claim, Step::Claim);
            if rng.random_bool(0.5) {
                s.at(claim + MIN, Step::Contact)
            } else {
                s.at(claim + MIN, Step::Dispatch)
            }
        }
    }
}

pub fn random_technical(w: &World, rng: &mut StdRng, n: usize, t: i64) -> Story {
    let client = rng.random_range(0..w.clients.len());
    let s = Story::new(format!("tech-{n}"), client, "low_battery", t);
    let claim = t + rng.random_range(MIN..30 * MIN);
    match rng.random_range(0..4) {
        0 => s
            .at(claim, Step::Claim)
            .at(claim + HOUR, Step::Resolve)
            .at(claim + HOUR, Step::Close(true)),
        1 => s.at(claim, Step::Cleared),
        2 => s,
        _ => s.at(claim, Step::Claim).at(claim + HOUR, Step::Resolve),
    }
}

/// When each device was first heard from, and its offline jobs (opened, ended).
pub struct DeviceTruth {
    pub client: usize,
    pub heard_at: i64,
    pub offline: Option<(i64, Option<i64>)>,
}

pub struct History {
    pub world: World,
    /// (incident id, opened_at, truth) of everything imported.
    pub incidents: Vec<(i64, i64, Truth)>,
    pub devices: Vec<DeviceTruth>,
    /// Ids of the hand-made incidents, by name.
    pub named: HashMap<&'static str, i64>,
}

pub async fn generate(db: &Db, seed: u64) -> History {
    let mut rng = StdRng::seed_from_u64(seed);
    let world = seed_world(db, &mut rng, 30).await;
    let w = &world;
    let mut stories: Vec<(Option<&'static str>, Story)> = Vec::new();
    for n in 0..150 {
        let t = NOV + rng.random_range(0..(DEC - NOV - 2 * HOUR));
        let s = if rng.random_bool(0.8) {
            random_emergency(w, &mut rng, n, t)
        } else {
            random_technical(w, &mut rng, n, t)
        };
        stories.push((None, s));
    }
    // Client 0 lives on 北京街: its contracted provider is the street's.
    let (carer, provider) = (
        w.carers[&w.clients[0].contracted.unwrap()][0],
        w.clients[0].contracted.unwrap(),
    );
    let answered_after = |name: &str, received: i64, secs: i64| {
        Story::new(name.into(), 0, "sos", received)
            .at(received + secs * SEC, Step::Claim)
            .at(received + secs * SEC + MIN, Step::Resolve)
            .at(received + secs * SEC + 2 * MIN, Step::Close(true))
    };
    let t = NOV + 10 * 24 * HOUR;
    let named: Vec<(&'static str, Story)> = vec![
        ("late_answer", answered_after("late_answer", t, 212)),
        (
            "never_claimed",
            Story::new("never_claimed".into(), 0, "sos", t + HOUR)
                .at(t + HOUR + SEC, Step::Offer(carer, provider))
                .at(t + HOUR + MIN, Step::Accept(0))
                .at(t + HOUR + 20 * MIN, Step::Arrive(0))
                .at(t + HOUR + 30 * MIN, Step::Resolve),
        ),
        (
            "false_alarm",
            Story::new("false_alarm".into(), 0, "sos", t + 2 * HOUR)
                .at(t + 2 * HOUR + 20 * SEC, Step::Claim)
                .at(t + 2 * HOUR + 30 * SEC, Step::Offer(carer, provider))
                .at(t + 2 * HOUR + MIN, Step::Accept(0))
                // Nobody arrives: the resident pressed by mistake.
                .at(t + 3 * HOUR + 30 * MIN, Step::Cancel),
        ),
        (
            "late_carer",
            Story::new("late_carer".into(), 0, "fall", t + 4 * HOUR)
                .at(t + 4 * HOUR + 10 * SEC, Step::Claim)
                .at(t + 4 * HOUR + 20 * SEC, Step::Offer(carer, provider))
                .at(t + 4 * HOUR + MIN, Step::Accept(0))
                .at(t + 4 * HOUR + MIN + 71 * MIN, Step::Arrive(0))
                .at(t + 6 * HOUR, Step::Resolve),
        ),
        (
            "still_waiting",
            Story::new("still_waiting".into(), 0, "sos", t + 5 * HOUR),
        ),
        // The month's edges in Guangzhou time; all answered late so that the
        // breach list shows which month took them.
        (
            "last_second",
            answered_after("last_second", DEC - SEC - 150, 100),
        ),
        ("next_month", answered_after("next_month", DEC - 150, 100)),
        (
            "first_second",
            answered_after("first_second", NOV - 150, 100),
        ),
        (
            "previous_month",
            answered_after("previous_month", NOV - SEC - 150, 100),
        ),
    ];
    stories.extend(named.into_iter().map(|(name, s)| (Some(name), s)));

    // Devices: most heard from before the month, some during, one after;
    // some with an offline job.
    let mut devices = Vec::new();
    for (i, c) in w.clients.iter().enumerate() {
        let heard_at = match i % 10 {
            3 => NOV + rng.random_range(0..(DEC - NOV)),
            7 => DEC + HOUR,
            _ => NOV - 40 * 24 * HOUR,
        };
        db.mark_heard(std::slice::from_ref(&c.device), heard_at)
            .await
            .unwrap();
        let offline = match i % 6 {
            // Offline since October, back in November.
            0 => Some((
                NOV - 5 * 24 * HOUR,
                Some(NOV + rng.random_range(HOUR..20 * 24 * HOUR)),
            )),
            // Offline from some day in November, still.
            1 => Some((NOV + rng.random_range(0..(DEC - NOV)), None)),
            // A spell inside the month.
            2 => {
                let a = NOV + rng.random_range(0..20 * 24 * HOUR);
                Some((a, Some(a + rng.random_range(HOUR..5 * 24 * HOUR))))
            }
            // Offline only after the month.
            3 => Some((DEC + 2 * HOUR, None)),
            _ => None,
        };
        if let Some((opened, ended)) = offline {
            let mut s = Story::new(format!("offline-{i}"), i, "offline", opened - 150);
            if let Some(e) = ended {
                s = s.at(e, Step::Cleared);
            }
            stories.push((None, s));
        }
        devices.push(DeviceTruth {
            client: i,
            heard_at,
            offline,
        });
    }

    let built: Vec<(Option<&'static str>, ImportedIncident, Truth)> = stories
        .into_iter()
        .map(|(name, s)| {
            let (inc, t) = s.build(w);
            (name, inc, t)
        })
        .collect();
    let to_import: Vec<ImportedIncident> = built.iter().map(|b| b.1.clone()).collect();
    let ids = db.import_incident_history(&to_import).await.unwrap();
    assert_eq!(ids.len(), to_import.len());
    // A second import of the same history changes nothing.
    assert_eq!(
        db.import_incident_history(&to_import[..3]).await.unwrap(),
        ids[..3]
    );
    let mut named = HashMap::new();
    let mut incidents = Vec::new();
    for (id, (name, inc, truth)) in ids.into_iter().zip(built) {
        if let Some(n) = name {
            named.insert(n, id);
        }
        incidents.push((id, inc.opened_at, truth));
    }
    History {
        world,
        incidents,
        devices,
        named,
    }
}

/// The figures of one group, counted here.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    pub life_safety: u64,
    pub technical: u64,
    pub cancelled: u64,
    pub merged: u64,
    pub handled: u64,
    pub handled_base: u64,
    pub answer: [u64; 3],
    pub attend: [u64; 3],
    pub watched: u64,
    pub online: u64,
    pub watched_ms: i64,
    pub offline_ms: i64,
}

/// (measured, within the inner limit, within the outer one) for one incident.
pub fn tally(v: Option<Option<i64>>, inner: i64, outer: i64) -> [u64; 3] {
    match v {
        None => [0, 0, 0],
        Some(None) => [1, 0, 0],
        Some(Some(ms)) => [1, u64::from(ms <= inner), u64::from(ms <= outer)],
    }
}

pub fn key_for(h: &History, by: Grouping, client: usize, provider: Option<i64>) -> String {
    let c = &h.world.clients[client];
    match by {
        Grouping::Provider => format!("{provider:?}"),
        Grouping::District => c.district.to_owned(),
        Grouping::Street => format!("{}/{}", c.district, c.street),
        Grouping::Category => c.category.unwrap_or("(none)").to_owned(),
    }
}

pub fn expected(h: &History, by: Grouping) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for (_, opened, t) in &h.incidents {
        if !t.in_month(*opened) {
            continue;
        }
        let e = out
            .entry(key_for(h, by, t.client, t.provider(&h.world)))
            .or_default();
        if t.life_safety {
            e.life_safety += 1;
        } else {
            e.technical += 1;
        }
        e.cancelled += u64::from(t.state == State::Cancelled);
        e.merged += u64::from(t.state == State::Merged);
        if let Some(handled) = t.handled() {
            e.handled_base += 1;
            e.handled += u64::from(handled);
        }
        for (sum, add) in [
            (&mut e.answer, tally(t.answer(), 60 * SEC, 180 * SEC)),
            (&mut e.attend, tally(t.attend(), 45 * MIN, 60 * MIN)),
        ] {
            for i in 0..3 {
                sum[i] += add[i];
            }
        }
    }
    for d in &h.devices {
        if d.heard_at >= DEC {
            continue;
        }
        let c = &h.world.clients[d.client];
        let e = out
            .entry(key_for(h, by, d.client, c.contracted))
            .or_default();
        let from = d.heard_at.max(NOV);
        e.watched += 1;
        e.watched_ms += DEC - from;
        match d.offline {
            Some((a, b)) => {
                let end = b.unwrap_or(DEC).min(DEC);
                e.offline_ms += (end - a.max(from)).max(0);
                e.online += u64::from(!(a < DEC && b.is_none_or(|b| b >= DEC)));
            }
            None => e.online += 1,
        }
    }
    out
}

pub fn expected_breaches(h: &History) -> BTreeSet<(i64, Measure, u64)> {
    let mut out = BTreeSet::new();
    for (id, opened, t) in &h.incidents {
        if !t.in_month(*opened) {
            continue;
        }
        for (m, v, inner, outer) in [
            (Measure::Answer, t.answer(), 60, 180),
            (Measure::Attend, t.attend(), 45 * 60, 60 * 60),
        ] {
            let limit = match v {
                None => None,
                Some(None) => Some(outer),
                Some(Some(ms)) if ms > outer as i64 * SEC => Some(outer),
                Some(Some(ms)) if ms > inner as i64 * SEC => Some(inner),
                Some(Some(_)) => None,
            };
            if let Some(l) = limit {
                out.insert((*id, m, l));
            }
        }
    }
    out
}
