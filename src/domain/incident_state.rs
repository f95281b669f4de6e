//! The incident state machine: every state, every action, and which action
//! may move which state. Anything not in the table is refused.

use std::fmt;

use crate::DispatchState;

/// Where an incident stands. Terminal: closed, cancelled, merged. Stored,
/// served and taken (`GET /api/v1/incidents?state=`) by the names
/// [`State::as_str`] gives.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    /// Waiting in the operators' queue.
    Queued,
    /// An operator owns it.
    Claimed,
    /// The operator has voice contact (resident, family, neighbour).
    InContact,
    /// A carer and/or an emergency service has been sent.
    Dispatched,
    CarerAccepted,
    OnScene,
    /// Help was given; an operator still closes it with an outcome.
    Resolved,
    Closed,
    /// The resident cancelled, or it was a false alarm.
    Cancelled,
    /// Folded into another incident of the same person.
    Merged,
}

/// What someone does to an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Queue,
    Claim,
    Contact,
    Dispatch,
    CarerAccept,
    CarerArrive,
    Resolve,
    Close,
    Cancel,
    Merge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} an incident that is {from}")]
pub struct IllegalTransition {
    pub from: State,
    pub action: Action,
}

impl State {
    pub const ALL: [State; 11] = [
        State::Received,
        State::Queued,
        State::Claimed,
        State::InContact,
        State::Dispatched,
        State::CarerAccepted,
        State::OnScene,
        State::Resolved,
        State::Closed,
        State::Cancelled,
        State::Merged,
    ];

    /// Still needs someone. The database's one-open-incident-per-person index
    /// uses the same definition.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            State::Resolved | State::Closed | State::Cancelled | State::Merged
        )
    }

    /// Whether entering this state closes the incident (`closed_at`, from
    /// which retention counts): every ending but *resolved*, which waits for
    /// an operator's close.
    pub fn closes(self) -> bool {
        !self.is_open() && self != State::Resolved
    }

    /// The dispatch states of the offers an incident entering this state takes
    /// back from their carers (`withdrawn`): none while it is open; an offer
    /// nobody answered as soon as it ends; a carer on the way (accepted, not
    /// arrived) only when it is closed, cancelled or merged, since after
    /// "resolved" the operator may still want the visit, and a carer who has
    /// arrived is in the room and finishes with `completed`.
    pub fn withdraws(self) -> &'static [DispatchState] {
        match self {
            State::Resolved => &[DispatchState::Offered],
            State::Closed | State::Cancelled | State::Merged => {
                &[DispatchState::Offered, DispatchState::Accepted]
            }
            _ => &[],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::Queued => "queued",
            State::Claimed => "claimed",
            State::InContact => "in_contact",
            State::Dispatched => "dispatched",
            State::CarerAccepted => "carer_accepted",
            State::OnScene => "on_scene",
            State::Resolved => "resolved",
            State::Closed => "closed",
            State::Cancelled => "cancelled",
            State::Merged => "merged",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The state after `action`, or why it is refused.
    pub fn apply(self, action: Action) -> Result<State, IllegalTransition> {
        use Action as A;
        use State as S;
        let next = match (self, action) {
            (S::Received, A::Queue) => S::Queued,
            (S::Queued, A::Claim) => S::Claimed,
            // Help may be on its way before an operator takes the incident (an
            // automatic offer accepted at once); the operator still claims it.
            (S::Dispatched | S::CarerAccepted | S::OnScene, A::Claim) => self,
            (S::Claimed, A::Contact) => S::InContact,
            // Help is sent: the first dispatch moves the incident on; a further
            // one (an ambulance after the carer) never moves it back.
            (S::Queued | S::Claimed | S::InContact, A::Dispatch) => S::Dispatched,
            (S::Dispatched | S::CarerAccepted | S::OnScene, A::Dispatch) => self,
            (S::Queued | S::Claimed | S::InContact | S::Dispatched, A::CarerAccept) => {
                S::CarerAccepted
            }
            (S::CarerAccepted | S::OnScene, A::CarerAccept) => self,
            (S::CarerAccepted | S::OnScene, A::CarerArrive) => S::OnScene,
            // Someone must have taken the incident before it can be resolved:
            // acknowledging (or nothing at all) is not resolving.
            (
                S::Claimed | S::InContact | S::Dispatched | S::CarerAccepted | S::OnScene,
                A::Resolve,
            ) => S::Resolved,
            (S::Resolved, A::Close) => S::Closed,
            // Once a carer stands in the room the incident is resolved, not cancelled.
            (
                S::Received
                | S::Queued
                | S::Claimed
                | S::InContact
                | S::Dispatched
                | S::CarerAccepted,
                A::Cancel,
            ) => S::Cancelled,
            (from, A::Merge) if from.is_open() => S::Merged,
            (from, action) => return Err(IllegalTransition { from, action }),
        };
        Ok(next)
    }
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Queue,
        Action::Claim,
        Action::Contact,
        Action::Dispatch,
        Action::CarerAccept,
        Action::CarerArrive,
        Action::Resolve,
        Action::Close,
        Action::Cancel,
        Action::Merge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Queue => "queue",
            Action::Claim => "claim",
            Action::Contact => "contact",
            Action::Dispatch => "dispatch",
            Action::CarerAccept => "carer_accept",
            Action::CarerArrive => "carer_arrive",
            Action::Resolve => "resolve",
            Action::Close => "close",
            Action::Cancel => "cancel",
            Action::Merge => "merge",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compared with a state's stored name, as a row read back is in tests and
/// filters: `row.state == "queued"`.
impl PartialEq<str> for State {
    fn eq(&self, name: &str) -> bool {
        self.as_str() == name
    }
}

impl PartialEq<&str> for State {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

// A state is stored as its name in a text column (feature `sqlx`, which
// the store turns on): read back through `State::parse`.
#[cfg(feature = "sqlx")]
pingantong_protocol::stored_as_text!(State, "incident state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_one_name_in_the_database_and_the_api() {
        for s in State::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(
                serde_json::from_value::<State>(s.as_str().into()).unwrap(),
                s
            );
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        for bad in ["open", "Resolved", "", "resolved "] {
            assert!(
                serde_json::from_value::<State>(bad.into()).is_err(),
                "{bad}"
            );
        }
    }

    /// The whole table written out independently: (from, action) → to.
    /// Every pair not listed must be refused.
    const LEGAL: &[(State, Action, State)] = {
        use Action as A;
        use State as S;
        &[
            (S::Received, A::Queue, S::Queued),
            (S::Received, A::Cancel, S::Cancelled),
            (S::Received, A::Merge, S::Merged),
            (S::Queued, A::Claim, S::Claimed),
            (S::Queued, A::Dispatch, S::Dispatched),
            (S::Queued, A::CarerAccept, S::CarerAccepted),
            (S::Queued, A::Cancel, S::Cancelled),
            (S::Queued, A::Merge, S::Merged),
            (S::Claimed, A::Contact, S::InContact),
            (S::Claimed, A::Dispatch, S::Dispatched),
            (S::Claimed, A::CarerAccept, S::CarerAccepted),
            (S::Claimed, A::Resolve, S::Resolved),
            (S::Claimed, A::Cancel, S::Cancelled),
            (S::Claimed, A::Merge, S::Merged),
            (S::InContact, A::Dispatch, S::Dispatched),
            (S::InContact, A::CarerAccept, S::CarerAccepted),
            (S::InContact, A::Resolve, S::Resolved),
            (S::InContact, A::Cancel, S::Cancelled),
            (S::InContact, A::Merge, S::Merged),
            (S::Dispatched, A::Claim, S::Dispatched),
            (S::Dispatched, A::Dispatch, S::Dispatched),
            (S::Dispatched, A::CarerAccept, S::CarerAccepted),
            (S::Dispatched, A::Resolve, S::Resolved),
            (S::Dispatched, A::Cancel, S::Cancelled),
            (S::Dispatched, A::Merge, S::Merged),
            (S::CarerAccepted, A::Claim, S::CarerAccepted),
            (S::CarerAccepted, A::Dispatch, S::CarerAccepted),
            (S::CarerAccepted, A::CarerAccept, S::CarerAccepted),
            (S::CarerAccepted, A::CarerArrive, S::OnScene),
            (S::CarerAccepted, A::Resolve, S::Resolved),
            (S::CarerAccepted, A::Cancel, S::Cancelled),
            (S::CarerAccepted, A::Merge, S::Merged),
            (S::OnScene, A::Claim, S::OnScene),
            (S::OnScene, A::Dispatch, S::OnScene),
            (S::OnScene, A::CarerAccept, S::OnScene),
            (S::OnScene, A::CarerArrive, S::OnScene),
            (S::OnScene, A::Resolve, S::Resolved),
            (S::OnScene, A::Merge, S::Merged),
            (S::Resolved, A::Close, S::Closed),
        ]
    };

    #[test]
    fn every_pair_is_as_the_table_says() {
        let mut legal = 0;
        for from in State::ALL {
            for action in Action::ALL {
                let want = LEGAL
                    .iter()
                    .find(|(f, a, _)| *f == from && *a == action)
                    .map(|(_, _, to)| *to);
                match (from.apply(action), want) {
                    (Ok(to), Some(w)) => {
                        assert_eq!(to, w, "{from} + {action}");
                        legal += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!((e.from, e.action), (from, action));
                        assert!(e.to_string().contains(from.as_str()));
                    }
                    (got, want) => panic!("{from} + {action}: got {got:?}, want {want:?}"),
                }
            }
        }
        assert_eq!(legal, LEGAL.len());
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for s in [State::Closed, State::Cancelled, State::Merged] {
            assert!(Action::ALL.iter().all(|a| s.apply(*a).is_err()), "{s}");
        }
    }

    #[test]
    fn only_an_ending_withdraws_offers_and_an_arrived_carer_is_never_withdrawn() {
        for s in State::ALL {
            let w = s.withdraws();
            assert_eq!(w.is_empty(), s.is_open(), "{s}");
            assert!(!w.contains(&DispatchState::Arrived), "{s}");
            assert_eq!(
                w.contains(&DispatchState::Accepted),
                !s.is_open() && s != State::Resolved,
                "{s}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert_eq!(State::parse("nope"), None);
    }
}
