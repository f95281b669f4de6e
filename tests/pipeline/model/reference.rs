//! The reference model: what each step must do to incidents and dispatches.

use super::*;

/// A dispatch's state as the model expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Offer {
    Offered,
    Accepted,
    Arrived,
    Completed,
    Declined,
    Expired,
    /// The incident ended while the offer or job was live.
    Withdrawn,
}

impl Offer {
    pub(super) fn parse(s: &str) -> Offer {
        match s {
            "offered" => Offer::Offered,
            "accepted" => Offer::Accepted,
            "arrived" => Offer::Arrived,
            "completed" => Offer::Completed,
            "declined" => Offer::Declined,
            "expired" => Offer::Expired,
            "withdrawn" => Offer::Withdrawn,
            other => panic!("dispatch state {other:?} is not one the model knows"),
        }
    }

    /// Someone is still asked, or on the way, or there.
    pub(super) fn is_live(self) -> bool {
        matches!(self, Offer::Offered | Offer::Accepted | Offer::Arrived)
    }
}

#[derive(Clone, Debug)]
pub(super) struct Incident {
    pub(super) resident: usize,
    pub(super) state: State,
    pub(super) claimed_by: Option<String>,
}

#[derive(Clone, Debug)]
pub(super) struct Dispatch {
    pub(super) incident: i64,
    pub(super) carer: i64,
    pub(super) state: Offer,
    /// The stage's clock at which an unanswered offer expires.
    pub(super) due_at: i64,
}

/// What a request must get: done, or refused with this status and an error
/// naming something the model knows.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expect {
    Done,
    /// The named check, the status, and a phrase the error must contain.
    Refused(&'static str, StatusCode, String),
}

impl Expect {
    fn conflict(check: &'static str, phrase: String) -> Self {
        Expect::Refused(check, StatusCode::CONFLICT, phrase)
    }
}

/// The offers and jobs an incident takes back as it enters `state`: an
/// offer nobody answered as soon as it ends; a carer on the way once it is
/// closed, cancelled or merged (after "resolved" the operator may still want
/// the visit). A carer who has arrived is in the room and finishes with
/// `completed`: never taken back.
pub(super) fn withdrawn_by(state: State) -> &'static [Offer] {
    match state {
        State::Resolved => &[Offer::Offered],
        State::Closed | State::Cancelled | State::Merged => &[Offer::Offered, Offer::Accepted],
        _ => &[],
    }
}

/// An operator's step as the model sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct OperatorStep {
    pub(super) action: Action,
    pub(super) take_over: bool,
    /// A cancel with a reason from the list and the confirmation.
    pub(super) reason: bool,
}

#[derive(Default)]
pub(super) struct Model {
    pub(super) incidents: BTreeMap<i64, Incident>,
    pub(super) dispatches: BTreeMap<i64, Dispatch>,
    /// (device, seq) of every press → the incident it must belong to.
    pub(super) alarms: BTreeMap<(String, i64), Option<i64>>,
}

impl Model {
    pub(super) fn open_incident_of(&self, resident: usize) -> Option<i64> {
        self.incidents
            .iter()
            .find(|(_, i)| i.resident == resident && i.state.is_open())
            .map(|(id, _)| *id)
    }

    /// The incident `age` places back from the newest, wrapping.
    pub(super) fn incident_by_age(&self, age: u8) -> Option<i64> {
        let ids: Vec<i64> = self.incidents.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[ids.len() - 1 - usize::from(age) % ids.len()])
    }

    pub(super) fn dispatch_by_age(&self, age: u8) -> Option<i64> {
        let ids: Vec<i64> = self.dispatches.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[ids.len() - 1 - usize::from(age) % ids.len()])
    }

    pub(super) fn live_offer(&self, incident: i64, carer: i64) -> Option<i64> {
        self.dispatches
            .iter()
            .find(|(_, d)| d.incident == incident && d.carer == carer && d.state.is_live())
            .map(|(id, _)| *id)
    }

    /// An operator's step: refused without a reason (a cancel), for a
    /// claim of an incident someone holds, by the state machine, or for
    /// ending another operator's incident without taking it over. Done: the
    /// state it leads to, and whether the operator now holds it.
    pub(super) fn expect_step(
        &self,
        incident: i64,
        actor: &str,
        step: OperatorStep,
    ) -> (Expect, Option<(State, bool)>) {
        let i = &self.incidents[&incident];
        if step.action == Action::Cancel && !step.reason {
            return (
                Expect::Refused(
                    "refusal_matches",
                    StatusCode::BAD_REQUEST,
                    "needs a reason".into(),
                ),
                None,
            );
        }
        if step.action == Action::Claim
            && let Some(who) = &i.claimed_by
        {
            return (
                Expect::conflict("refusal_matches", format!("already claimed by {who}")),
                None,
            );
        }
        let to = match i.state.apply(step.action) {
            Ok(to) => to,
            Err(e) => return (Expect::conflict("refusal_matches", e.to_string()), None),
        };
        let ends = matches!(
            step.action,
            Action::Resolve | Action::Close | Action::Cancel
        );
        let held_by_other = i.claimed_by.as_deref().is_some_and(|who| who != actor);
        if ends && held_by_other && !step.take_over {
            return (
                Expect::conflict("take_over_needed", "take it over".into()),
                None,
            );
        }
        let holds = step.action == Action::Claim || (ends && held_by_other);
        (Expect::Done, Some((to, holds)))
    }

    /// A step applied: the incident moves, and as it ends it takes back
    /// the offers and jobs [`withdrawn_by`] says.
    pub(super) fn move_incident(&mut self, incident: i64, to: State, claimed_by: Option<&str>) {
        let i = self.incidents.get_mut(&incident).expect("known incident");
        i.state = to;
        if let Some(who) = claimed_by {
            i.claimed_by = Some(who.to_owned());
        }
        let taken = withdrawn_by(to);
        for d in self.dispatches.values_mut() {
            if d.incident == incident && taken.contains(&d.state) {
                d.state = Offer::Withdrawn;
            }
        }
    }

    pub(super) fn expect_dispatch(&self, incident: i64, carer: i64) -> Expect {
        let i = &self.incidents[&incident];
        if !i.state.is_open() {
            return Expect::conflict("refusal_matches", format!("is {}", i.state));
        }
        if self.live_offer(incident, carer).is_some() {
            return Expect::conflict(
                "one_live_offer",
                format!("carer {carer} already holds dispatch"),
            );
        }
        Expect::Done
    }

    /// A carer's answer to dispatch `id`: refused, or done (and whether it
    /// is new; a repeat is harmless). A job goes offered → accepted →
    /// arrived → completed, or offered → declined; anything else, and any
    /// answer to a withdrawn or someone else's offer, is refused.
    pub(super) fn expect_answer(&self, id: i64, carer: i64, answer: Answer) -> (Expect, bool) {
        let Some(d) = self.dispatches.get(&id) else {
            return (
                Expect::conflict("refusal_matches", format!("dispatch {id} does not exist")),
                false,
            );
        };
        if d.carer != carer {
            return (
                Expect::conflict("foreign_answer_refused", format!("dispatch {id}")),
                false,
            );
        }
        use Offer as O;
        let fresh = match (answer, d.state) {
            (Answer::Accept, O::Offered) => Some(true),
            (Answer::Accept, O::Accepted) => Some(false),
            (Answer::Decline, O::Offered) => Some(true),
            (Answer::Decline, O::Declined) => Some(false),
            (Answer::Arrived, O::Accepted) => Some(true),
            (Answer::Arrived, O::Arrived) => Some(false),
            (Answer::Completed, O::Arrived) => Some(true),
            (Answer::Completed, O::Completed) => Some(false),
            _ => None,
        };
        match fresh {
            Some(fresh) => (Expect::Done, fresh),
            None => {
                let (check, phrase) = match (answer, d.state) {
                    (_, O::Withdrawn) => (
                        "late_answer_refused",
                        format!("dispatch {id} was withdrawn"),
                    ),
                    (Answer::Completed, O::Accepted) => {
                        ("completed_needs_arrival", format!("dispatch {id}"))
                    }
                    _ => ("refusal_matches", format!("dispatch {id}")),
                };
                (Expect::conflict(check, phrase), false)
            }
        }
    }

    /// A new answer applied: the dispatch moves, and the incident with it
    /// where the state machine allows (a decline's next offer is the server's).
    pub(super) fn answered(&mut self, id: i64, answer: Answer) {
        let d = self.dispatches.get_mut(&id).expect("known dispatch");
        d.state = match answer {
            Answer::Accept => Offer::Accepted,
            Answer::Decline => Offer::Declined,
            Answer::Arrived => Offer::Arrived,
            Answer::Completed => Offer::Completed,
            Answer::Next => unreachable!("a next answer is made concrete before it is sent"),
        };
        let incident = d.incident;
        let action = match answer {
            Answer::Accept => Action::CarerAccept,
            Answer::Arrived => Action::CarerArrive,
            Answer::Completed => Action::Resolve,
            Answer::Decline | Answer::Next => return,
        };
        if let Ok(to) = self.incidents[&incident].state.apply(action) {
            self.move_incident(incident, to, None);
        }
    }

    /// The clock moved to `now`: offers still unanswered at their deadline expire.
    pub(super) fn advanced(&mut self, now: i64) {
        for d in self.dispatches.values_mut() {
            if d.state == Offer::Offered && d.due_at <= now {
                d.state = Offer::Expired;
            }
        }
    }
}
