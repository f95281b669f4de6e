//! The live feed: every new incident and every step of every incident, as
//! server-sent events, in the order of the timeline's ids.
//!
//! One task reads new timeline rows (woken by whoever writes them, and every
//! 250 ms in case a writer elsewhere — another server, the CLI — did) and
//! fans them out. A client that reconnects says the last id it saw (the
//! `Last-Event-ID` header browsers send by themselves, or `?after=`) and is
//! first given everything after it from the database, then the live rows:
//! nothing is missed, nothing is sent twice.
//!
//! PostgreSQL hands a row its id when it is inserted, not when it commits, so
//! a row can become visible after rows with higher ids were read. The ids
//! such a read skipped are kept for a while and looked for again; one found
//! late is sent to every open stream then, out of order (its id says where it
//! belongs). A stream's own reads (its backlog, a catch-up after falling
//! behind) can skip such a row too, and may run ahead of the feed's: each
//! stream keeps the ids it skipped and sends one when it turns up, from
//! either. SQLite's single writer commits in id order: it leaves no such
//! gaps.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiState, Caller, STAFF};
use pingantong_store::{Db, StoreError, TimelineEntry, now_ms};
use pingantong_telemetry::events;

/// Rows read per database page.
const PAGE: i64 = 500;

/// How long an id skipped by a read is looked for: far longer than any of
/// this server's transactions; an id whose transaction rolled back (or a
/// sequence that skipped it) is never filled.
const HOLE_WAIT: Duration = Duration::from_secs(30);

/// Most ids looked for at once; a larger jump (a restored database) is not
/// tracked id by id.
const MOST_HOLES: usize = 1_000;

/// A row as fanned out, in id order or late (filling an id skipped earlier).
type Live = Arc<TimelineEntry>;

/// What one stream has sent: everything after its start up to `sent`,
/// except the ids its reads skipped (`gaps`, with when they were skipped),
/// which it sends if they turn up within [`HOLE_WAIT`]. A row reaches a
/// stream from its own reads of the database (the backlog, a catch-up) or
/// from the feed's, in either order, so each stream keeps its own account:
/// nothing missed, nothing sent twice.
#[derive(Debug)]
struct Cursor {
    sent: i64,
    gaps: std::collections::BTreeMap<i64, Instant>,
}

impl Cursor {
    fn after(start: i64) -> Self {
        Self {
            sent: start,
            gaps: Default::default(),
        }
    }

    /// Whether the row `id` is to be sent now (if so, it counts as sent).
    fn admit(&mut self, id: i64) -> bool {
        if id <= self.sent {
            return self.gaps.remove(&id).is_some();
        }
        if id > self.sent + 1 {
            let now = Instant::now();
            let skipped = (id - self.sent - 1) as usize;
            if self.gaps.len().saturating_add(skipped) > MOST_HOLES {
                // Ids never filled (a transaction rolled back) age out.
                self.gaps.retain(|_, at| at.elapsed() < HOLE_WAIT);
            }
            let room = MOST_HOLES.saturating_sub(self.gaps.len()) as i64;
            let skipped = self.sent + 1..id.min(self.sent + 1 + room);
            self.gaps.extend(skipped.map(|g| (g, now)));
        }
        self.sent = id;
        true
    }
}

pub struct Feed {
    db: Db,
    live: broadcast::Sender<Live>,
    /// Poke after writing to the timeline.
    pub changed: Arc<Notify>,
    /// Highest id fanned out so far.
    last: AtomicI64,
    /// Ids below `last` not seen yet, with when they were first missed.
    holes: Mutex<Vec<(i64, Instant)>>,
    /// Ends every open stream: the HTTP server's graceful shutdown waits for
    /// them, and a console left open must not keep the server up.
    stop: CancellationToken,
}

impl Feed {
    /// A feed starting after the newest row now on any timeline (a client
    /// without a last id gets what happens next, not the whole history).
    pub async fn new(
        db: Db,
        changed: Arc<Notify>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, StoreError> {
        let (live, _) = broadcast::channel(4096);
        let last = db.last_timeline_id().await?;
        Ok(Arc::new(Self {
            db,
            live,
            changed,
            last: AtomicI64::new(last),
            holes: Mutex::new(Vec::new()),
            stop,
        }))
    }

    /// Fan out new timeline rows until `shutdown`.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let feed = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = feed.changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                if let Err(e) = feed.pump().await {
                    events::StageFailed {
                        stage: "feed",
                        error: &e,
                    }
                    .emit();
                }
            }
        })
    }

    async fn pump(&self) -> Result<(), StoreError> {
        self.fill_holes().await?;
        loop {
            let after = self.last.load(Ordering::Relaxed);
            let rows = self.db.timeline_since(after, PAGE).await?;
            // A short page is the end: no second read to find nothing (a
            // row committed meanwhile comes with the wake-up its writer sends).
            let more = rows.len() as i64 == PAGE;
            let Some(last) = rows.last().map(|r| r.id) else {
                return Ok(());
            };
            self.note_holes(after, rows.iter().map(|r| r.id));
            for row in rows {
                // Nobody listening is fine.
                let _ = self.live.send(Arc::new(row));
            }
            self.last.store(last, Ordering::Relaxed);
            if !more {
                return Ok(());
            }
        }
    }

    /// Remember the ids a read of the rows after `after` skipped.
    fn note_holes(&self, after: i64, ids: impl Iterator<Item = i64>) {
        let now = Instant::now();
        let mut holes = self.holes.lock().unwrap_or_else(|e| e.into_inner());
        let mut expect = after + 1;
        for id in ids {
            let room = MOST_HOLES.saturating_sub(holes.len()) as i64;
            holes.extend((expect..id.min(expect + room)).map(|h| (h, now)));
            expect = id + 1;
        }
    }

    /// Send the rows of skipped ids that have committed since.
    async fn fill_holes(&self) -> Result<(), StoreError> {
        let ids: Vec<i64> = {
            let mut holes = self.holes.lock().unwrap_or_else(|e| e.into_inner());
            holes.retain(|(_, at)| at.elapsed() < HOLE_WAIT);
            holes.iter().map(|(id, _)| *id).collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        let found = self.db.timeline_rows(&ids).await?;
        if found.is_empty() {
            return Ok(());
        }
        self.holes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(id, _)| !found.iter().any(|r| r.id == *id));
        for row in found {
            let _ = self.live.send(Arc::new(row));
        }
        Ok(())
    }
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Resume after this timeline id (overrides `Last-Event-ID`); without
    /// either, the feed starts with what happens next.
    after: Option<i64>,
}

fn event(row: &TimelineEntry) -> Event {
    Event::default()
        .id(row.id.to_string())
        .event("timeline")
        .json_data(row)
        .unwrap_or_else(|_| Event::default().comment("unserialisable row"))
}

/// Live feed of incidents and their steps (server-sent events).
#[utoipa::path(
    get,
    path = "/api/v1/feed",
    tag = "incidents",
    params(FeedQuery, ("Last-Event-ID" = Option<String>, Header, description = "the last id seen")),
    responses(
        (status = 200, description = "`text/event-stream` of `timeline` events, each a TimelineEntry with its id", content_type = "text/event-stream", body = String),
        (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn feed(
    State(s): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<FeedQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(STAFF)?;
    let header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    // Subscribe before reading the backlog, so nothing falls between the two.
    let mut live = s.feed.live.subscribe();
    let start = match q.after.or(header) {
        Some(id) => id.max(0),
        None => s.feed.last.load(Ordering::Relaxed),
    };
    let db = s.db.clone();
    let stop = s.feed.stop.clone();
    let session = caller.clone();
    let stream = async_stream::stream! {
        // The stream lives only as long as the session that opened it: it ends
        // when the session expires, is logged out, or its account is disabled
        // or changes role (read back every SESSION_CHECK, on any server).
        let expiry = tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(session.expires_at - now_ms()).unwrap_or(0));
        let expired = tokio::time::sleep_until(expiry);
        tokio::pin!(expired);
        let mut check = tokio::time::interval(SESSION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        let mut cursor = Cursor::after(start);
        // Backlog from the database, page by page.
        loop {
            match db.timeline_since(cursor.sent, PAGE).await {
                Ok(rows) if !rows.is_empty() => {
                    for row in &rows {
                        if cursor.admit(row.id) {
                            yield Ok(event(row));
                        }
                    }
                }
                Ok(_) => break,
                Err(_) => break,
            }
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                () = &mut expired => {
                    events::FeedClosed { user: &session.username, reason: "session_expired" }.emit();
                    break;
                }
                _ = check.tick() => {
                    match session_ended(&db, &session).await {
                        Some(reason) => {
                            events::FeedClosed { user: &session.username, reason }.emit();
                            break;
                        }
                        None => continue,
                    }
                }
                next = live.recv() => next,
            };
            match next {
                Ok(row) => {
                    if cursor.admit(row.id) {
                        yield Ok(event(&row));
                    }
                }
                // Too slow for the live channel: catch up from the database,
                // the rows after the last sent and those of the gaps.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    while let Ok(rows) = db.timeline_since(cursor.sent, PAGE).await {
                        if rows.is_empty() {
                            break;
                        }
                        for row in &rows {
                            if cursor.admit(row.id) {
                                yield Ok(event(row));
                            }
                        }
                    }
                    let gaps: Vec<i64> = cursor.gaps.keys().copied().collect();
                    if let Ok(rows) = db.timeline_rows(&gaps).await {
                        for row in &rows {
                            if cursor.admit(row.id) {
                                yield Ok(event(row));
                            }
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// How often an open feed reads its session back.
const SESSION_CHECK: Duration = Duration::from_secs(2);

/// Why the session behind a feed no longer entitles it to the timeline, if it
/// does not. A database that cannot be read keeps the feed open: the next
/// check, or the next request of the console, decides.
async fn session_ended(db: &Db, caller: &Caller) -> Option<&'static str> {
    let now = now_ms();
    let session = db.session_user(&caller.token_hash).await;
    // An open console is a console in use: its feed keeps the session from idling out.
    if let Ok(Some(s)) = &session
        && s.is_live(now)
        && s.worth_touching(now)
    {
        let _ = db.touch_session(&caller.token_hash, now).await;
    }
    match session {
        Ok(Some(s)) if s.disabled => Some("account_disabled"),
        Ok(Some(s)) if s.revoked_at.is_some() => Some("logged_out"),
        Ok(Some(s)) if !s.is_live(now) => Some("session_expired"),
        Ok(Some(s)) if s.role != caller.role => Some("role_changed"),
        Ok(Some(_)) | Err(_) => None,
        Ok(None) => Some("logged_out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race the cursor closes: a stream's own backlog read passes a row
    /// still uncommitted, and the feed, which had not read that far, later
    /// fans the row out in order, not as late.
    #[test]
    fn a_row_skipped_by_the_streams_own_read_is_sent_when_it_comes() {
        let mut c = Cursor::after(10);
        // Backlog: 11 uncommitted, 12 read.
        assert!(c.admit(12));
        // The feed's read, after 11 committed: 11 then 12, in order.
        assert!(c.admit(11), "the skipped row is sent");
        assert!(!c.admit(12), "and the other not twice");
        assert!(!c.admit(11));
        assert!(c.gaps.is_empty());
    }

    #[test]
    fn rows_in_order_leave_no_gaps_and_old_rows_are_not_sent() {
        let mut c = Cursor::after(100);
        assert!(!c.admit(99), "before the start");
        assert!(!c.admit(100));
        for id in 101..=110 {
            assert!(c.admit(id));
        }
        assert_eq!(c.sent, 110);
        assert!(c.gaps.is_empty());
    }

    #[test]
    fn gaps_are_bounded_and_never_filled_ones_age_out() {
        let mut c = Cursor::after(0);
        assert!(c.admit(5_000));
        assert_eq!(
            c.gaps.len(),
            MOST_HOLES,
            "a jump is tracked up to the bound"
        );
        assert!(c.admit(1), "the first skipped ids are tracked");
        // Every gap is old: the next jump makes room by dropping them.
        let old = Instant::now() - HOLE_WAIT - Duration::from_secs(1);
        for at in c.gaps.values_mut() {
            *at = old;
        }
        assert!(c.admit(5_003));
        assert_eq!(
            c.gaps.keys().copied().collect::<Vec<_>>(),
            vec![5_001, 5_002]
        );
    }
}
