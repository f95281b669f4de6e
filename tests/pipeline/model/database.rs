//! What the database says: the rows the model compares, and the work still owed.

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    /// id → (state, claimed_by, client_id)
    pub(super) incidents: BTreeMap<i64, (String, Option<String>, Option<i64>)>,
    /// id → (incident, carer, state)
    pub(super) dispatches: BTreeMap<i64, (i64, i64, String)>,
    /// (device, seq) → (kind, incident)
    pub(super) alarms: BTreeMap<(String, i64), (String, Option<i64>)>,
    pub(super) timeline_lines: i64,
    /// carer → busy
    pub(super) busy: BTreeMap<i64, bool>,
}

/// Run one read-only query on whichever backend `$db` is.
macro_rules! read {
    ($db:expr, $q:expr, $t:ty) => {
        match $db {
            Db::Sqlite { read, .. } => sqlx::query_as::<_, $t>($q).fetch_all(read).await,
            Db::Postgres(p, _) => sqlx::query_as::<_, $t>($q).fetch_all(p).await,
        }
        .expect("the model's read")
    };
}

pub(super) async fn look(db: &Db) -> Seen {
    let incidents = read!(
        db,
        "SELECT id, state, claimed_by, client_id FROM incidents ORDER BY id",
        (i64, String, Option<String>, Option<i64>)
    );
    let dispatches = read!(
        db,
        "SELECT id, incident_id, carer_id, state FROM dispatches ORDER BY id",
        (i64, i64, i64, String)
    );
    let alarms = read!(
        db,
        "SELECT device_id, seq, kind, incident_id FROM alarms ORDER BY id",
        (String, i64, String, Option<i64>)
    );
    let lines = read!(db, "SELECT COUNT(*) FROM incident_events", (i64,));
    let busy = read!(db, "SELECT id, busy FROM carers ORDER BY id", (i64, bool));
    Seen {
        incidents: incidents
            .into_iter()
            .map(|(id, s, c, k)| (id, (s, c, k)))
            .collect(),
        dispatches: dispatches
            .into_iter()
            .map(|(id, i, c, s)| (id, (i, c, s)))
            .collect(),
        alarms: alarms
            .into_iter()
            .map(|(d, s, k, i)| ((d, s), (k, i)))
            .collect(),
        timeline_lines: lines[0].0,
        busy: busy.into_iter().collect(),
    }
}

/// Work the stage still owes at `now`: alarms not handled, incidents not
/// routed, deadlines passed and not fired.
pub(super) async fn owed(db: &Db, now: i64) -> i64 {
    let q = sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM alarms WHERE processed_at IS NULL) + \
         (SELECT COUNT(*) FROM incidents WHERE routed_at IS NULL AND client_id IS NOT NULL \
          AND state NOT IN ('resolved', 'closed', 'cancelled', 'merged')) + \
         (SELECT COUNT(*) FROM timers WHERE fired_at IS NULL AND due_at <= {now})"
    ));
    let n: Vec<(i64,)> = match db {
        Db::Sqlite { read, .. } => sqlx::query_as(q).fetch_all(read).await,
        Db::Postgres(p, _) => sqlx::query_as(q).fetch_all(p).await,
    }
    .expect("the model's read");
    n[0].0
}
