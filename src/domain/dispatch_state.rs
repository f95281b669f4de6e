//! Where an offer to a carer stands, from the offer to the job done.

use std::fmt;

/// A dispatch's state. Stored, served and taken by the names
/// [`DispatchState::as_str`] gives. An offer is `offered`; the carer's
/// answers move it to `accepted` or `declined`, then `arrived` and
/// `completed`; no answer in time makes it `expired`; the incident's end
/// makes a live one `withdrawn`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DispatchState {
    Offered,
    Accepted,
    Declined,
    Expired,
    Withdrawn,
    Arrived,
    Completed,
}

impl DispatchState {
    pub const ALL: [DispatchState; 7] = [
        DispatchState::Offered,
        DispatchState::Accepted,
        DispatchState::Declined,
        DispatchState::Expired,
        DispatchState::Withdrawn,
        DispatchState::Arrived,
        DispatchState::Completed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DispatchState::Offered => "offered",
            DispatchState::Accepted => "accepted",
            DispatchState::Declined => "declined",
            DispatchState::Expired => "expired",
            DispatchState::Withdrawn => "withdrawn",
            DispatchState::Arrived => "arrived",
            DispatchState::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The carer still has the job: offered, accepted or on the spot (the
    /// database's one-live-offer-per-carer index uses the same list).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            DispatchState::Offered | DispatchState::Accepted | DispatchState::Arrived
        )
    }
}

impl fmt::Display for DispatchState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for DispatchState {
    fn eq(&self, name: &str) -> bool {
        self.as_str() == name
    }
}

impl PartialEq<&str> for DispatchState {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

// Stored as its name in a text column (feature `sqlx`, which the store turns
// on): read back through `DispatchState::parse`.
#[cfg(feature = "sqlx")]
pingantong_protocol::stored_as_text!(DispatchState, "dispatch state");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dispatch_state_has_one_name_in_the_database_and_the_api() {
        for s in DispatchState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(
                serde_json::from_value::<DispatchState>(s.as_str().into()).unwrap(),
                s
            );
            assert_eq!(DispatchState::parse(s.as_str()), Some(s));
        }
        for bad in ["Offered", "", "on_the_way", "accepted "] {
            assert_eq!(DispatchState::parse(bad), None, "{bad:?}");
        }
        let live: Vec<_> = DispatchState::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .collect();
        assert_eq!(
            live,
            [
                DispatchState::Offered,
                DispatchState::Accepted,
                DispatchState::Arrived
            ]
        );
    }
}
