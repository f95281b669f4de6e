//! Log-in throttling. An account is locked in the database after
//! [`ACCOUNT_FAILURES`] failed log-ins in a row (on every server, until
//! [`LOCKOUT`] has passed or an admin unlocks it); an address that fails
//! [`ADDRESS_FAILURES`] times within [`WINDOW`] — guessing across many
//! names, which no account lock sees — is refused for [`LOCKOUT`] by this
//! server. The address side is kept in memory: it is a brake on guessing, not
//! a record, and it resets with the server.

use std::net::IpAddr;
use std::time::Duration;

use dashmap::DashMap;

/// Failed log-ins in a row that lock an account.
pub const ACCOUNT_FAILURES: i32 = 5;
/// Failed log-ins from one address within [`WINDOW`] that close it.
pub const ADDRESS_FAILURES: u32 = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// How long a lock lasts.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most; past it, those quiet for a window are forgotten.
const MAX_ADDRESSES: usize = 10_000;

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One address's recent failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// When the current window began.
    pub since: i64,
    pub failures: u32,
    pub locked_until: Option<i64>,
}

/// The slot after one more failure at `now`: a new window once the old one
/// has passed; locked when the window holds [`ADDRESS_FAILURES`].
pub fn after_failure(slot: Option<Slot>, now: i64) -> Slot {
    let mut s = match slot {
        Some(s) if now - s.since < ms(WINDOW) => s,
        _ => Slot {
            since: now,
            failures: 0,
            locked_until: None,
        },
    };
    s.failures += 1;
    if s.failures >= ADDRESS_FAILURES {
        s.locked_until = Some(now + ms(LOCKOUT));
        s.failures = 0;
        s.since = now;
    }
    s
}

#[derive(Default)]
pub struct AddressThrottle {
    slots: DashMap<IpAddr, Slot>,
}

impl AddressThrottle {
    /// Until when `ip` is refused, if it is now.
    pub fn locked_until(&self, ip: IpAddr, now: i64) -> Option<i64> {
        self.slots
            .get(&ip)
            .and_then(|s| s.locked_until)
            .filter(|until| *until > now)
    }

    /// Count a failure from `ip`; the time it is locked until, if this one locked it.
    pub fn failed(&self, ip: IpAddr, now: i64) -> Option<i64> {
        if self.slots.len() >= MAX_ADDRESSES {
            self.slots.retain(|_, s| {
                now - s.since < ms(WINDOW) || s.locked_until.is_some_and(|u| u > now)
            });
        }
        let before = self.slots.get(&ip).map(|s| *s);
        let after = after_failure(before, now);
        self.slots.insert(ip, after);
        (after.locked_until != before.and_then(|b| b.locked_until))
            .then_some(after.locked_until)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_at_the_limit_within_a_window_only() {
        let mut slot = None;
        for i in 0..ADDRESS_FAILURES - 1 {
            slot = Some(after_failure(slot, i64::from(i) * 1000));
        }
        assert_eq!(slot.unwrap().locked_until, None);
        let locked = after_failure(slot, 30_000);
        assert_eq!(locked.locked_until, Some(30_000 + ms(LOCKOUT)));
        // Spread over more than a window: never locked.
        let mut slot = None;
        for i in 0..3 * ADDRESS_FAILURES {
            slot = Some(after_failure(slot, i64::from(i) * ms(WINDOW) / 10));
            assert_eq!(slot.unwrap().locked_until, None, "failure {i}");
        }
    }

    #[test]
    fn the_throttle_refuses_a_locked_address_until_the_lock_ends() {
        let t = AddressThrottle::default();
        let ip: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let mut locked = None;
        for _ in 0..ADDRESS_FAILURES {
            locked = locked.or(t.failed(ip, 1_000));
        }
        assert_eq!(locked, Some(1_000 + ms(LOCKOUT)));
        assert_eq!(t.locked_until(ip, 2_000), locked);
        assert_eq!(t.locked_until(other, 2_000), None);
        assert_eq!(t.locked_until(ip, 1_000 + ms(LOCKOUT)), None);
    }
}
