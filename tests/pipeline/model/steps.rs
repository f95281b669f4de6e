//! The steps a case is made of, and the reference state machine that generates them.

use super::*;

/// Which carer answers a dispatch.
#[derive(Clone, Copy, Debug)]
pub(super) enum Who {
    /// The carer it was offered to.
    Owner,
    /// Another one (0 or 1: which of the other two).
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    Accept,
    Decline,
    Arrived,
    Completed,
    /// Whatever follows the dispatch's state (accept an offer, arrive after
    /// accepting, complete after arriving; accept, late, anything else), so
    /// cases reach the far end of a job as often as they stumble.
    Next,
}

impl Answer {
    pub(super) fn verb(self) -> &'static str {
        match self {
            Answer::Accept => "accept",
            Answer::Decline => "decline",
            Answer::Arrived => "arrived",
            Answer::Completed => "completed",
            Answer::Next => "next",
        }
    }
}

/// One step. Incidents and dispatches are picked by age (0: the newest),
/// counted over every one the model knows, ended or not.
#[derive(Clone)]
pub(super) enum Step {
    Sos {
        resident: usize,
    },
    CancelPress {
        resident: usize,
    },
    Claim {
        incident: u8,
        operator: usize,
    },
    Dispatch {
        incident: u8,
        carer: usize,
        operator: usize,
    },
    /// `dispatch: None` is an id that does not exist; `twice` sends it again.
    Answer {
        dispatch: Option<u8>,
        who: Who,
        answer: Answer,
        twice: bool,
    },
    /// Move the stage's clock on: deadlines fall due.
    Advance {
        secs: u32,
    },
    /// `take_over`: said to take an incident another operator holds.
    Resolve {
        incident: u8,
        operator: usize,
        take_over: bool,
    },
    Close {
        incident: u8,
        operator: usize,
        take_over: bool,
    },
    /// `reason`: with a reason from the list and the confirmation.
    Cancel {
        incident: u8,
        operator: usize,
        take_over: bool,
        reason: bool,
    },
    Restart,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Sos { resident } => write!(f, "Sos(resident {resident})"),
            Step::CancelPress { resident } => write!(f, "CancelPress(resident {resident})"),
            Step::Claim { incident, operator } => {
                write!(f, "Claim(incident#{incident}, {})", OPERATORS[*operator])
            }
            Step::Dispatch {
                incident,
                carer,
                operator,
            } => write!(
                f,
                "Dispatch(incident#{incident}, carer#{carer}, {})",
                OPERATORS[*operator]
            ),
            Step::Answer {
                dispatch,
                who,
                answer,
                twice,
            } => {
                match dispatch {
                    Some(d) => write!(f, "Answer(dispatch#{d}")?,
                    None => write!(f, "Answer(no such dispatch")?,
                }
                write!(
                    f,
                    ", {who:?}, {}{})",
                    answer.verb(),
                    if *twice { ", twice" } else { "" }
                )
            }
            Step::Advance { secs } => write!(f, "Advance({secs} s)"),
            Step::Resolve {
                incident,
                operator,
                take_over,
            } => write!(
                f,
                "Resolve(incident#{incident}, {}{})",
                OPERATORS[*operator],
                if *take_over { ", take over" } else { "" }
            ),
            Step::Close {
                incident,
                operator,
                take_over,
            } => write!(
                f,
                "Close(incident#{incident}, {}{})",
                OPERATORS[*operator],
                if *take_over { ", take over" } else { "" }
            ),
            Step::Cancel {
                incident,
                operator,
                take_over,
                reason,
            } => write!(
                f,
                "Cancel(incident#{incident}, {}{}{})",
                OPERATORS[*operator],
                if *take_over { ", take over" } else { "" },
                if *reason { "" } else { ", no reason" }
            ),
            Step::Restart => write!(f, "Restart"),
        }
    }
}

/// What the generator knows: whether anyone has pressed yet (steps about
/// incidents before the first press would only test the empty list).
pub(super) struct Steps;

impl ReferenceStateMachine for Steps {
    type State = u32;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<u32> {
        Just(0).boxed()
    }

    fn transitions(presses: &u32) -> BoxedStrategy<Step> {
        let sos = (0..RESIDENTS).prop_map(|resident| Step::Sos { resident });
        if *presses == 0 {
            return sos.boxed();
        }
        let op = 0..OPERATORS.len();
        let take_over = prop::bool::weighted(0.3);
        let who = prop_oneof![4 => Just(Who::Owner), 1 => (0u8..2).prop_map(Who::Other)];
        let answer = prop_oneof![
            4 => Just(Answer::Next),
            1 => Just(Answer::Accept),
            1 => Just(Answer::Decline),
            1 => Just(Answer::Arrived),
            1 => Just(Answer::Completed),
        ];
        prop_oneof![
            3 => sos,
            1 => (0..RESIDENTS).prop_map(|resident| Step::CancelPress { resident }),
            2 => (0u8..4, op.clone()).prop_map(|(incident, operator)| Step::Claim { incident, operator }),
            2 => (0u8..4, 0..CARERS, op.clone()).prop_map(|(incident, carer, operator)| {
                Step::Dispatch { incident, carer, operator }
            }),
            6 => (
                prop::option::weighted(0.9, 0u8..4),
                who,
                answer,
                prop::bool::weighted(0.2),
            )
                .prop_map(|(dispatch, who, answer, twice)| Step::Answer {
                    dispatch,
                    who,
                    answer,
                    twice
                }),
            2 => prop_oneof![Just(30u32), Just(61), Just(91)].prop_map(|secs| Step::Advance { secs }),
            2 => (0u8..4, op.clone(), take_over).prop_map(|(incident, operator, take_over)| {
                Step::Resolve { incident, operator, take_over }
            }),
            2 => (0u8..4, op.clone(), take_over).prop_map(|(incident, operator, take_over)| {
                Step::Close { incident, operator, take_over }
            }),
            1 => (0u8..4, op, take_over, prop::bool::weighted(0.85)).prop_map(
                |(incident, operator, take_over, reason)| Step::Cancel {
                    incident,
                    operator,
                    take_over,
                    reason
                }
            ),
            1 => Just(Step::Restart),
        ]
        .boxed()
    }

    fn preconditions(presses: &u32, step: &Step) -> bool {
        matches!(step, Step::Sos { .. }) || *presses > 0
    }

    fn apply(presses: u32, step: &Step) -> u32 {
        presses + u32::from(matches!(step, Step::Sos { .. }))
    }
}
