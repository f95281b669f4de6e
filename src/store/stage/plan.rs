//! The incident stage's decisions for a batch, free of I/O.
//!
//! [`StagePlan::decide`] takes the batch's work and what the database said in
//! the batch's transaction — which alarms this pass claimed, each person's
//! open incident and its state — and says what the batch writes: incidents to
//! open, presses to fold, cancels and clears to record, timeline lines,
//! deadlines, alarm links, and what to answer for each item.
//! [`StagePlan::districts`] names the addresses whose carers must be read;
//! [`StagePlan::route`] then chooses the carers. `super` applies the plan, each
//! kind of write in one statement.
//!
//! Everything here is decided in batch order, as if the items were applied
//! one after another: a second press folds into the incident the first one
//! opened, a clear closes the incident and a press after it opens a new one.

use std::collections::{BTreeMap, HashMap, HashSet};

use pingantong_domain::{Action, State};

use super::{RouteDone, RouteRequest, StageDone, StageWork};
use crate::{CarerCandidate, DispatchOffer, IncidentOutcome, NewDispatch, NewIncident};

/// An incident of the batch: one already in the database, or the `n`th one
/// the batch opens (its id known once the batch's new incidents are written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Id(i64),
    New(usize),
}

/// What a timeline line says: text, or the words for an offer whose
/// dispatch id the database gives when it is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    Text(String),
    Offer(usize),
}

/// A timeline line, written with the batch's others.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub incident: Target,
    pub actor: &'static str,
    pub action: &'static str,
    pub to_state: Option<State>,
    pub detail: Detail,
}

/// A deadline: on an incident, and for an offer of the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timer {
    pub incident: Target,
    pub offer: Option<usize>,
    pub kind: &'static str,
    pub due: i64,
}

/// An incident the batch opens.
#[derive(Debug, Clone)]
pub struct Opening<'a> {
    pub incident: NewIncident<'a>,
    pub route: Option<RouteRequest<'a>>,
    /// The opening press and the batch's further presses folded into it.
    pub presses: i64,
    /// Its state when written: `queued`, or where a clear of the same batch
    /// took it (the unique index on open keys must hold at every insert).
    pub state: State,
    /// A cancel of the same batch: written with the incident.
    pub cancel_requested: bool,
    /// Whether nothing is owed to routing any more (done here, not owed, or
    /// the incident ended in the batch); otherwise the sweep routes it.
    pub routed: bool,
    /// The offer the batch makes for it, an index into [`StagePlan::offers`].
    pub offer: Option<usize>,
    /// Where its routing line stands among the lines, until routed.
    route_line: Option<usize>,
}

impl<'a> Opening<'a> {
    /// How to route it in this batch, if it is routed here at all: given a
    /// route and still open. An incident the batch also ended is offered to
    /// nobody: the carer would be offered a job and told in the same breath
    /// it is over.
    fn route_here(&self) -> Option<RouteRequest<'a>> {
        self.route.filter(|_| self.state.is_open())
    }
}

/// An offer to a carer, for an incident the batch opens.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub opening: usize,
    pub dispatch: NewDispatch,
}

/// How one item of the batch ends, some of it known only once the new
/// incidents have ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Done(StageDone),
    Opened(usize),
    Folded(Target),
    CancelRecorded(Target),
    Cleared(Target),
}

/// What the batch writes.
#[derive(Debug, Clone, Default)]
pub struct StagePlan<'a> {
    pub openings: Vec<Opening<'a>>,
    pub offers: Vec<Offer>,
    /// Incidents in the database whose resident asked to cancel.
    pub cancels: Vec<i64>,
    /// Incidents in the database a device's clear moves on, with where to.
    pub clears: Vec<(i64, State)>,
    /// Incidents in the database → further presses.
    pub presses: BTreeMap<i64, i64>,
    /// `None`: a routing line that turned out not to be needed.
    pub lines: Vec<Option<Line>>,
    pub timers: Vec<Timer>,
    /// alarm → incident
    pub links: Vec<(i64, Target)>,
    /// One for each item of the batch, in order.
    pub answers: Vec<Answer>,
}

impl<'a> StagePlan<'a> {
    /// Decide the batch. `claimed`: the alarms this pass claimed (any other
    /// was handled already); `open`: each key's open incident and its state
    /// (`None`: a state this version does not know, which no clear moves).
    pub fn decide(
        work: &[StageWork<'a>],
        claimed: &HashSet<i64>,
        open: HashMap<String, (i64, Option<State>)>,
    ) -> Self {
        let mut plan = StagePlan::default();
        // A claim is taken by the first item of its alarm: a second copy of
        // the same alarm in the batch finds it taken, as it would in the
        // next batch (each item as if after the one before).
        let mut claimed = claimed.clone();
        let mut open: HashMap<String, (Target, Option<State>)> = open
            .into_iter()
            .map(|(k, (id, s))| (k, (Target::Id(id), s)))
            .collect();
        for w in work {
            let answer = match *w {
                StageWork::Processed { .. } => Answer::Done(StageDone::Processed),
                StageWork::Incident { incident, route } => {
                    if !claimed.remove(&incident.alarm_id) {
                        Answer::Done(StageDone::Incident {
                            outcome: IncidentOutcome::AlreadyProcessed,
                            route: None,
                        })
                    } else {
                        plan.press(&mut open, incident, route)
                    }
                }
                StageWork::Cancel { alarm_id, fold_key } => {
                    if !claimed.remove(&alarm_id) {
                        Answer::Done(StageDone::Cancel(IncidentOutcome::AlreadyProcessed))
                    } else {
                        plan.cancel(&open, alarm_id, fold_key)
                    }
                }
                StageWork::Clear {
                    alarm_id,
                    fold_key,
                    detail,
                } => {
                    if !claimed.remove(&alarm_id) {
                        Answer::Done(StageDone::Cleared(None))
                    } else {
                        plan.clear(&mut open, alarm_id, fold_key, detail)
                    }
                }
            };
            plan.answers.push(answer);
        }
        plan
    }

    fn press(
        &mut self,
        open: &mut HashMap<String, (Target, Option<State>)>,
        n: NewIncident<'a>,
        route: Option<RouteRequest<'a>>,
    ) -> Answer {
        let detail = Detail::Text(if n.verified {
            format!("alarm {}", n.alarm_id)
        } else {
            format!("alarm {} from an unverified device", n.alarm_id)
        });
        if let Some(&(target, _)) = open.get(n.fold_key) {
            match target {
                Target::Id(id) => *self.presses.entry(id).or_default() += 1,
                Target::New(k) => self.openings[k].presses += 1,
            }
            self.line(target, "system", "press_folded", None, detail);
            self.links.push((n.alarm_id, target));
            return Answer::Folded(target);
        }
        let k = self.openings.len();
        let target = Target::New(k);
        open.insert(n.fold_key.to_owned(), (target, Some(State::Queued)));
        if let Some(service) = n.advise {
            let text = format!("the rule for {} advises a {service} hand-off", n.kind);
            self.line(target, "rules", "handoff_advised", None, Detail::Text(text));
        }
        self.line(target, "system", "opened", Some(State::Queued), detail);
        // Every incident, verified or not, must be taken by an operator in time.
        self.timers.push(Timer {
            incident: target,
            offer: None,
            kind: "claim",
            due: n.claim_due_at,
        });
        self.links.push((n.alarm_id, target));
        let route_line = route.map(|_| {
            self.lines.push(None);
            self.lines.len() - 1
        });
        self.openings.push(Opening {
            incident: n,
            route,
            presses: 1,
            state: State::Queued,
            cancel_requested: false,
            // Unverified senders are never routed to a carer: an operator
            // decides. Routing owed but not done here is left to the sweep.
            routed: route.is_some() || !n.offer || !n.verified || n.client_id.is_none(),
            offer: None,
            route_line,
        });
        Answer::Opened(k)
    }

    /// A resident's cancel, attached to their open incident (which stays
    /// open: an operator confirms a cancel, a device never closes an alarm).
    fn cancel(
        &mut self,
        open: &HashMap<String, (Target, Option<State>)>,
        alarm_id: i64,
        fold_key: &str,
    ) -> Answer {
        let Some(&(target, _)) = open.get(fold_key) else {
            return Answer::Done(StageDone::Cancel(IncidentOutcome::NothingToCancel));
        };
        match target {
            Target::Id(id) => self.cancels.push(id),
            Target::New(k) => self.openings[k].cancel_requested = true,
        }
        let detail = Detail::Text(format!("alarm {alarm_id}"));
        self.line(target, "resident", "cancel_requested", None, detail);
        self.links.push((alarm_id, target));
        Answer::CancelRecorded(target)
    }

    /// The device reports its trouble is over: the open job for it ends, or
    /// the news goes on the timeline of an incident already being handled.
    fn clear(
        &mut self,
        open: &mut HashMap<String, (Target, Option<State>)>,
        alarm_id: i64,
        fold_key: &str,
        detail: &str,
    ) -> Answer {
        let Some(&(target, state)) = open.get(fold_key) else {
            return Answer::Done(StageDone::Cleared(None));
        };
        let next = state.and_then(|s| s.apply(Action::Cancel).ok());
        if let Some(next) = next {
            match target {
                Target::Id(id) => self.clears.push((id, next)),
                Target::New(k) => self.openings[k].state = next,
            }
            if next.is_open() {
                open.insert(fold_key.to_owned(), (target, Some(next)));
            } else {
                open.remove(fold_key);
            }
        }
        self.line(
            target,
            "device",
            if next.is_some() {
                "cleared"
            } else {
                "condition_cleared"
            },
            next,
            Detail::Text(detail.to_owned()),
        );
        self.links.push((alarm_id, target));
        Answer::Cleared(target)
    }

    fn line(
        &mut self,
        incident: Target,
        actor: &'static str,
        action: &'static str,
        to_state: Option<State>,
        detail: Detail,
    ) {
        self.lines.push(Some(Line {
            incident,
            actor,
            action,
            to_state,
            detail,
        }));
    }

    /// The districts whose carers [`StagePlan::route`] needs.
    pub fn districts(&self) -> Vec<&'a str> {
        let mut seen = HashSet::new();
        self.openings
            .iter()
            .filter_map(|o| o.route_here().map(|r| r.client.district.as_str()))
            .filter(|d| seen.insert(*d))
            .collect()
    }

    /// Choose a carer for every opening to route, from `near`: the candidates
    /// of [`StagePlan::districts`] with the district of their coverage
    /// (offers made in this batch change no one's availability).
    pub fn route(&mut self, near: &[(String, CarerCandidate)]) {
        for k in 0..self.openings.len() {
            let o = &self.openings[k];
            let (Some(r), Some(at)) = (o.route_here(), o.route_line) else {
                continue;
            };
            let c = r.client;
            let here: Vec<CarerCandidate> = near
                .iter()
                .filter(|(district, candidate)| {
                    *district == c.district
                        && candidate.street.as_ref().is_none_or(|s| *s == c.street)
                })
                .map(|(_, candidate)| candidate.clone())
                .collect();
            let target = Target::New(k);
            let line = match (r.choose)(r.at.or(c.lat.zip(c.lon)), &here) {
                Some(dispatch) => {
                    let offer = self.offers.len();
                    self.offers.push(Offer {
                        opening: k,
                        dispatch,
                    });
                    self.openings[k].offer = Some(offer);
                    self.timers.push(Timer {
                        incident: target,
                        offer: Some(offer),
                        kind: "offer",
                        due: r.offer_due_at,
                    });
                    ("carer_offered", Detail::Offer(offer))
                }
                None => (
                    "no_carer_available",
                    Detail::Text(crate::incidents::NO_CARER.to_owned()),
                ),
            };
            self.lines[at] = Some(Line {
                incident: target,
                actor: "system",
                action: line.0,
                to_state: None,
                detail: line.1,
            });
        }
    }

    /// What routing the `k`th opening came to, once its offer (if any) is
    /// written as dispatch `dispatch_id` of incident `incident_id`.
    pub fn route_done(
        &self,
        k: usize,
        incident_id: i64,
        dispatch_id: Option<i64>,
        now: i64,
    ) -> Option<RouteDone> {
        let o = &self.openings[k];
        let r = o.route_here()?;
        let (Some(offer), Some(dispatch_id)) = (o.offer, dispatch_id) else {
            return Some(RouteDone::NoCarer);
        };
        let d = &self.offers[offer].dispatch;
        let c = r.client;
        Some(RouteDone::Offered(Box::new(DispatchOffer {
            dispatch_id,
            incident_id,
            carer_id: d.carer_id,
            kind: o.incident.kind.to_owned(),
            offered_at: now,
            distance_m: d.distance_m,
            client_name: c.name.clone(),
            address: c.address.clone(),
            lat: c.lat,
            lon: c.lon,
            medical_notes: c.medical_notes.clone(),
            medications: c.medications.clone(),
            allergies: c.allergies.clone(),
            key_safe: c.key_safe.clone(),
            reported_lat: r.at.map(|p| p.0),
            reported_lon: r.at.map(|p| p.1),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClientProfile;
    use proptest::prelude::*;

    fn client(district: &str) -> ClientProfile {
        ClientProfile {
            id: 7,
            name: "陈秀英".into(),
            address: "广州市越秀区北京街1号".into(),
            district: district.into(),
            street: "北京街".into(),
            lat: Some(23.129),
            lon: Some(113.266),
            language: "zh-CN".into(),
            medical_notes: "高血压".into(),
            medications: String::new(),
            allergies: String::new(),
            key_safe: "4711".into(),
            birth_year: None,
            subsidy_category: None,
            away_until: None,
            contacts: Vec::new(),
        }
    }

    fn press(alarm_id: i64, fold_key: &str) -> NewIncident<'_> {
        NewIncident {
            alarm_id,
            fold_key,
            client_id: Some(7),
            device_id: "PA000001",
            kind: "sos",
            lane: "life_safety",
            verified: true,
            offer: true,
            advise: None,
            notify: None,
            notify_at: 0,
            claim_due_at: 1_000,
        }
    }

    /// The first candidate with a carer, as the routing policy would if it
    /// had only one.
    fn first(_: Option<(f64, f64)>, c: &[CarerCandidate]) -> Option<NewDispatch> {
        c.iter().find_map(|c| {
            Some(NewDispatch {
                carer_id: c.carer_id?,
                provider_id: c.provider_id,
                distance_m: Some(100.0),
                fallback: false,
            })
        })
    }

    fn candidate(carer: Option<i64>, street: Option<&str>) -> CarerCandidate {
        CarerCandidate {
            provider_id: 3,
            carer_id: carer,
            lat: Some(23.13),
            lon: Some(113.27),
            street: street.map(str::to_owned),
            rank: 0,
            capacity: 0,
            active_jobs: 0,
        }
    }

    fn routed<'a>(n: NewIncident<'a>, c: &'a ClientProfile) -> StageWork<'a> {
        StageWork::Incident {
            incident: n,
            route: Some(RouteRequest {
                client: c,
                at: None,
                offer_due_at: 2_000,
                choose: first,
            }),
        }
    }

    fn all(ids: &[i64]) -> HashSet<i64> {
        ids.iter().copied().collect()
    }

    fn actions(plan: &StagePlan<'_>) -> Vec<(Target, &'static str)> {
        plan.lines
            .iter()
            .flatten()
            .map(|l| (l.incident, l.action))
            .collect()
    }

    #[test]
    fn a_second_press_folds_into_the_incident_the_first_opened() {
        let work = [
            StageWork::Incident {
                incident: press(1, "client:7"),
                route: None,
            },
            StageWork::Incident {
                incident: press(2, "client:7"),
                route: None,
            },
        ];
        let plan = StagePlan::decide(&work, &all(&[1, 2]), HashMap::new());
        assert_eq!(plan.openings.len(), 1);
        assert_eq!(plan.openings[0].presses, 2);
        assert_eq!(
            plan.answers,
            [Answer::Opened(0), Answer::Folded(Target::New(0))]
        );
        assert_eq!(
            actions(&plan),
            [(Target::New(0), "opened"), (Target::New(0), "press_folded")]
        );
        assert_eq!(plan.links, [(1, Target::New(0)), (2, Target::New(0))]);
        assert_eq!(plan.timers.len(), 1, "one claim deadline");
        assert!(plan.presses.is_empty());
        // Verified, owed a carer and not routed here: the sweep routes it.
        assert!(!plan.openings[0].routed);
    }

    #[test]
    fn presses_fold_into_an_open_incident_in_the_database() {
        let work = [
            StageWork::Incident {
                incident: press(1, "client:7"),
                route: None,
            },
            StageWork::Incident {
                incident: press(2, "client:7"),
                route: None,
            },
        ];
        let open = HashMap::from([("client:7".to_owned(), (40, Some(State::Claimed)))]);
        let plan = StagePlan::decide(&work, &all(&[1, 2]), open);
        assert!(plan.openings.is_empty());
        assert_eq!(plan.presses, BTreeMap::from([(40, 2)]));
        assert_eq!(
            plan.answers,
            [
                Answer::Folded(Target::Id(40)),
                Answer::Folded(Target::Id(40))
            ]
        );
        assert!(plan.timers.is_empty());
    }

    #[test]
    fn the_same_alarm_twice_in_a_batch_is_counted_once() {
        let work = [
            StageWork::Incident {
                incident: press(7, "k1"),
                route: None,
            },
            StageWork::Incident {
                incident: press(7, "k1"),
                route: None,
            },
        ];
        let plan = StagePlan::decide(&work, &HashSet::from([7]), HashMap::new());
        assert_eq!(plan.openings.len(), 1);
        assert_eq!(plan.openings[0].presses, 1);
        assert_eq!(
            plan.answers[1],
            Answer::Done(StageDone::Incident {
                outcome: IncidentOutcome::AlreadyProcessed,
                route: None
            })
        );
    }

    #[test]
    fn what_another_pass_claimed_is_answered_and_not_written() {
        let work = [
            StageWork::Incident {
                incident: press(1, "client:7"),
                route: None,
            },
            StageWork::Cancel {
                alarm_id: 2,
                fold_key: "client:7",
            },
            StageWork::Clear {
                alarm_id: 3,
                fold_key: "client:7",
                detail: "ok",
            },
            StageWork::Processed { alarm_id: 4 },
        ];
        let plan = StagePlan::decide(&work, &HashSet::new(), HashMap::new());
        assert!(plan.openings.is_empty() && plan.lines.is_empty() && plan.links.is_empty());
        assert_eq!(
            plan.answers,
            [
                Answer::Done(StageDone::Incident {
                    outcome: IncidentOutcome::AlreadyProcessed,
                    route: None
                }),
                Answer::Done(StageDone::Cancel(IncidentOutcome::AlreadyProcessed)),
                Answer::Done(StageDone::Cleared(None)),
                Answer::Done(StageDone::Processed),
            ]
        );
    }

    #[test]
    fn a_cancel_is_recorded_on_the_open_incident_which_stays_open() {
        let work = [
            StageWork::Cancel {
                alarm_id: 1,
                fold_key: "client:7",
            },
            StageWork::Incident {
                incident: press(2, "client:8"),
                route: None,
            },
            StageWork::Cancel {
                alarm_id: 3,
                fold_key: "client:8",
            },
            StageWork::Cancel {
                alarm_id: 4,
                fold_key: "client:9",
            },
        ];
        let open = HashMap::from([("client:7".to_owned(), (40, Some(State::Queued)))]);
        let plan = StagePlan::decide(&work, &all(&[1, 2, 3, 4]), open);
        assert_eq!(plan.cancels, [40]);
        assert!(plan.openings[0].cancel_requested);
        assert_eq!(plan.openings[0].state, State::Queued);
        assert_eq!(
            plan.answers,
            [
                Answer::CancelRecorded(Target::Id(40)),
                Answer::Opened(0),
                Answer::CancelRecorded(Target::New(0)),
                Answer::Done(StageDone::Cancel(IncidentOutcome::NothingToCancel)),
            ]
        );
    }

    #[test]
    fn a_clear_ends_the_job_and_a_press_after_it_opens_a_new_one() {
        let work = [
            StageWork::Clear {
                alarm_id: 1,
                fold_key: "device:PA1",
                detail: "battery ok",
            },
            StageWork::Incident {
                incident: press(2, "device:PA1"),
                route: None,
            },
        ];
        let open = HashMap::from([("device:PA1".to_owned(), (40, Some(State::Claimed)))]);
        let plan = StagePlan::decide(&work, &all(&[1, 2]), open);
        assert_eq!(plan.clears, [(40, State::Cancelled)]);
        assert_eq!(
            plan.answers,
            [Answer::Cleared(Target::Id(40)), Answer::Opened(0)]
        );
        let cleared = plan.lines[0].as_ref().unwrap();
        assert_eq!(
            (cleared.action, cleared.to_state),
            ("cleared", Some(State::Cancelled))
        );
    }

    #[test]
    fn a_clear_where_a_carer_stands_is_news_not_an_end() {
        let work = [StageWork::Clear {
            alarm_id: 1,
            fold_key: "device:PA1",
            detail: "up again",
        }];
        let open = HashMap::from([("device:PA1".to_owned(), (40, Some(State::OnScene)))]);
        let plan = StagePlan::decide(&work, &all(&[1]), open);
        assert!(plan.clears.is_empty());
        assert_eq!(actions(&plan), [(Target::Id(40), "condition_cleared")]);
        assert_eq!(plan.answers, [Answer::Cleared(Target::Id(40))]);
    }

    #[test]
    fn an_opened_incident_is_offered_to_a_carer_near_its_address() {
        let yuexiu = client("越秀区");
        let work = [routed(press(1, "client:7"), &yuexiu)];
        let mut plan = StagePlan::decide(&work, &all(&[1]), HashMap::new());
        assert_eq!(plan.districts(), ["越秀区"]);
        let near = [
            ("海珠区".to_owned(), candidate(Some(90), None)),
            ("越秀区".to_owned(), candidate(Some(91), Some("人民街"))),
            ("越秀区".to_owned(), candidate(Some(92), Some("北京街"))),
        ];
        plan.route(&near);
        assert_eq!(plan.offers.len(), 1);
        assert_eq!(
            plan.offers[0].dispatch.carer_id, 92,
            "same district, same street"
        );
        assert_eq!(
            actions(&plan),
            [
                (Target::New(0), "opened"),
                (Target::New(0), "carer_offered")
            ]
        );
        assert_eq!(plan.lines[1].as_ref().unwrap().detail, Detail::Offer(0));
        assert!(plan.openings[0].routed);
        let offer_deadline = plan.timers.iter().find(|t| t.kind == "offer").unwrap();
        assert_eq!((offer_deadline.offer, offer_deadline.due), (Some(0), 2_000));
        let Some(RouteDone::Offered(o)) = plan.route_done(0, 500, Some(600), 9) else {
            panic!("offered");
        };
        assert_eq!((o.dispatch_id, o.incident_id, o.carer_id), (600, 500, 92));
        assert_eq!(o.key_safe, "4711");
    }

    #[test]
    fn nobody_near_is_said_on_the_timeline() {
        let yuexiu = client("越秀区");
        let work = [routed(press(1, "client:7"), &yuexiu)];
        let mut plan = StagePlan::decide(&work, &all(&[1]), HashMap::new());
        plan.route(&[("越秀区".to_owned(), candidate(None, None))]);
        assert!(plan.offers.is_empty());
        assert_eq!(plan.lines[1].as_ref().unwrap().action, "no_carer_available");
        assert_eq!(plan.route_done(0, 500, None, 9), Some(RouteDone::NoCarer));
    }

    #[test]
    fn a_job_cleared_in_the_batch_that_opened_it_is_offered_to_nobody() {
        let yuexiu = client("越秀区");
        let work = [
            routed(press(1, "device:PA1"), &yuexiu),
            StageWork::Clear {
                alarm_id: 2,
                fold_key: "device:PA1",
                detail: "cleared",
            },
            StageWork::Incident {
                incident: press(3, "device:PA1"),
                route: None,
            },
        ];
        let mut plan = StagePlan::decide(&work, &all(&[1, 2, 3]), HashMap::new());
        assert!(plan.districts().is_empty());
        plan.route(&[("越秀区".to_owned(), candidate(Some(92), None))]);
        assert!(plan.offers.is_empty());
        assert_eq!(plan.openings[0].state, State::Cancelled);
        assert_eq!(
            plan.openings[1].state,
            State::Queued,
            "the press after opens anew"
        );
        assert_eq!(plan.route_done(0, 500, None, 9), None);
        assert_eq!(
            plan.answers,
            [
                Answer::Opened(0),
                Answer::Cleared(Target::New(0)),
                Answer::Opened(1)
            ]
        );
        // The unused routing line is dropped, not written.
        assert_eq!(
            actions(&plan),
            [
                (Target::New(0), "opened"),
                (Target::New(0), "cleared"),
                (Target::New(1), "opened")
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Item {
        Press(usize),
        Cancel(usize),
        Clear(usize),
        Processed,
    }

    fn item() -> impl Strategy<Value = (Item, bool)> {
        (
            prop_oneof![
                4 => (0..3usize).prop_map(Item::Press),
                1 => (0..3usize).prop_map(Item::Cancel),
                1 => (0..3usize).prop_map(Item::Clear),
                1 => Just(Item::Processed),
            ],
            // Claimed by this pass (or handled by another already).
            prop::bool::weighted(0.9),
        )
    }

    const KEYS: [&str; 3] = ["client:1", "client:2", "device:PA9"];

    proptest! {
        /// Any batch, against any open incidents: one answer per item, one
        /// open incident per key at every step, every press counted once,
        /// and deciding the batch whole is deciding it item by item.
        #[test]
        fn a_batch_is_decided_as_its_items_one_after_another(
            items in prop::collection::vec(item(), 0..24),
            existing in prop::collection::vec(prop::option::of(0..8usize), 3),
        ) {
            let open: HashMap<String, (i64, Option<State>)> = existing
                .iter()
                .enumerate()
                .filter_map(|(k, s)| {
                    let state = State::ALL[(*s)? % State::ALL.len()];
                    state.is_open().then(|| (KEYS[k].to_owned(), (100 + k as i64, Some(state))))
                })
                .collect();
            let work: Vec<StageWork<'_>> = items
                .iter()
                .enumerate()
                .map(|(i, (it, _))| {
                    let a = i as i64 + 1;
                    match *it {
                        Item::Press(k) => StageWork::Incident { incident: press(a, KEYS[k]), route: None },
                        Item::Cancel(k) => StageWork::Cancel { alarm_id: a, fold_key: KEYS[k] },
                        Item::Clear(k) => StageWork::Clear { alarm_id: a, fold_key: KEYS[k], detail: "ok" },
                        Item::Processed => StageWork::Processed { alarm_id: a },
                    }
                })
                .collect();
            let claimed: HashSet<i64> = items
                .iter()
                .enumerate()
                .filter(|(_, (_, c))| *c)
                .map(|(i, _)| i as i64 + 1)
                .collect();
            let plan = StagePlan::decide(&work, &claimed, open.clone());
            prop_assert_eq!(plan.answers.len(), work.len());

            // The model: one item at a time, the world updated after each.
            let mut world: HashMap<&str, (Target, State)> = open
                .iter()
                .map(|(k, (id, s))| (KEYS.iter().find(|x| *x == k).copied().unwrap(), (Target::Id(*id), s.unwrap())))
                .collect();
            let mut opened = 0usize;
            let mut folded_into: BTreeMap<i64, i64> = BTreeMap::new();
            for (w, answer) in work.iter().zip(&plan.answers) {
                let claimed_here = claimed.contains(&w.alarm_id());
                match (*w, claimed_here) {
                    (_, false) | (StageWork::Processed { .. }, _) => {
                        prop_assert!(matches!(answer, Answer::Done(_)));
                    }
                    (StageWork::Incident { incident, .. }, true) => match world.get(incident.fold_key) {
                        Some(&(t, _)) => {
                            prop_assert_eq!(answer, &Answer::Folded(t));
                            if let Target::Id(id) = t { *folded_into.entry(id).or_default() += 1; }
                        }
                        None => {
                            prop_assert_eq!(answer, &Answer::Opened(opened));
                            world.insert(incident.fold_key, (Target::New(opened), State::Queued));
                            opened += 1;
                        }
                    },
                    (StageWork::Cancel { fold_key, .. }, true) => match world.get(fold_key) {
                        Some(&(t, _)) => prop_assert_eq!(answer, &Answer::CancelRecorded(t)),
                        None => prop_assert_eq!(
                            answer,
                            &Answer::Done(StageDone::Cancel(IncidentOutcome::NothingToCancel))
                        ),
                    },
                    (StageWork::Clear { fold_key, .. }, true) => match world.get(fold_key).copied() {
                        Some((t, s)) => {
                            prop_assert_eq!(answer, &Answer::Cleared(t));
                            if let Ok(next) = s.apply(Action::Cancel) {
                                if next.is_open() {
                                    world.insert(fold_key, (t, next));
                                } else {
                                    world.remove(fold_key);
                                }
                            }
                        }
                        None => prop_assert_eq!(answer, &Answer::Done(StageDone::Cleared(None))),
                    },
                }
            }
            prop_assert_eq!(plan.openings.len(), opened);
            prop_assert_eq!(&plan.presses, &folded_into);
            // Every claimed press is counted once: on an incident of the
            // database or on one the batch opens.
            let presses = work
                .iter()
                .filter(|w| matches!(w, StageWork::Incident { .. }) && claimed.contains(&w.alarm_id()))
                .count() as i64;
            let counted = plan.presses.values().sum::<i64>()
                + plan.openings.iter().map(|o| o.presses).sum::<i64>();
            prop_assert_eq!(counted, presses);
            // What the batch leaves open is what the model left open, and no
            // key has two incidents open.
            let mut left: Vec<(String, Target)> = open
                .keys()
                .filter(|k| !plan.clears.iter().any(|(id, s)| open[*k].0 == *id && !s.is_open()))
                .map(|k| (k.clone(), Target::Id(open[k].0)))
                .chain(plan.openings.iter().enumerate().filter(|(_, o)| o.state.is_open()).map(|(n, o)| (o.incident.fold_key.to_owned(), Target::New(n))))
                .collect();
            left.sort_by(|a, b| a.0.cmp(&b.0));
            let mut model: Vec<(String, Target)> = world.iter().map(|(k, (t, _))| ((*k).to_owned(), *t)).collect();
            model.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(left, model);
        }
    }
}
