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

/// Rules the model holds the server to beyond the state machine's table.
#[derive(Clone, Copy)]
pub(super) struct Policy {
    /// `completed` only after `arrived`.
    pub(super) completed_needs_arrival: bool,
}

pub(super) const POLICY: Policy = Policy {
    completed_needs_arrival: true,
};

/// What a request must get: done, or refused with a 409 whose error names
/// something the model knows.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expect {
    Done,
    /// The named check, and a phrase the error must contain.
    Refused(&'static str, String),
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

    /// An operator's step: the state machine's verdict, and a claim by
    /// anyone on an incident someone holds is refused.
    pub(super) fn expect_step(&self, incident: i64, action: Action) -> (Expect, Option<State>) {
        let i = &self.incidents[&incident];
        if action == Action::Claim
            && let Some(who) = &i.claimed_by
        {
            return (
                Expect::Refused("refusal_matches", format!("already claimed by {who}")),
                None,
            );
        }
        match i.state.apply(action) {
            Ok(to) => (Expect::Done, Some(to)),
            Err(e) => (Expect::Refused("refusal_matches", e.to_string()), None),
        }
    }

    /// A step applied: the incident moves, and when it ends every offer and
    /// job still live on it is withdrawn.
    pub(super) fn move_incident(&mut self, incident: i64, to: State, claimed_by: Option<&str>) {
        let i = self.incidents.get_mut(&incident).expect("known incident");
        i.state = to;
        if let Some(who) = claimed_by {
            i.claimed_by = Some(who.to_owned());
        }
        if !to.is_open() {
            for d in self.dispatches.values_mut() {
                if d.incident == incident && d.state.is_live() {
                    d.state = Offer::Withdrawn;
                }
            }
        }
    }

    pub(super) fn expect_dispatch(&self, incident: i64, carer: i64) -> Expect {
        let i = &self.incidents[&incident];
        if !i.state.is_open() {
            return Expect::Refused("refusal_matches", format!("is {}", i.state));
        }
        if self.live_offer(incident, carer).is_some() {
            return Expect::Refused("one_live_offer", format!("carer {carer}"));
        }
        Expect::Done
    }

    /// A carer's answer to dispatch `id`: refused, or done (and whether it is new).
    pub(super) fn expect_answer(&self, id: i64, carer: i64, answer: Answer) -> (Expect, bool) {
        let Some(d) = self.dispatches.get(&id) else {
            return (
                Expect::Refused("refusal_matches", format!("dispatch {id} does not exist")),
                false,
            );
        };
        if d.carer != carer {
            return (
                Expect::Refused("foreign_answer_refused", format!("dispatch {id}")),
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
            (Answer::Completed, O::Accepted) if !POLICY.completed_needs_arrival => Some(true),
            (Answer::Completed, O::Completed) => Some(false),
            _ => None,
        };
        match fresh {
            Some(fresh) => (Expect::Done, fresh),
            None => {
                let check = match (answer, d.state) {
                    (_, O::Withdrawn) => "late_answer_refused",
                    (Answer::Completed, O::Accepted) => "completed_needs_arrival",
                    _ => "refusal_matches",
                };
                (Expect::Refused(check, format!("dispatch {id}")), false)
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
