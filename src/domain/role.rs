//! Who a console user is to the service: the role decides what they may see and do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Call-centre staff: take incidents, call residents, send help.
    Operator,
    /// Leads a shift: sees every operator's work and is alerted when nobody claims.
    Supervisor,
    /// Visits residents for one provider.
    Carer,
    /// The civil-affairs bureau: reads service figures and the audit log, changes nothing.
    Regulator,
    /// Manages accounts and configuration.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Operator,
        Role::Supervisor,
        Role::Carer,
        Role::Regulator,
        Role::Admin,
    ];

    /// As stored (the database's CHECK lists the same names).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Supervisor => "supervisor",
            Role::Carer => "carer",
            Role::Regulator => "regulator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse(""), None);
    }
}
