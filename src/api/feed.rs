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
//! belongs). SQLite's single writer commits in id order: it leaves no such
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
use crate::store::{Db, StoreError, TimelineEntry};
use crate::telemetry::events;

/// Rows read per database page.
const PAGE: i64 = 500;

/// How long an id skipped by a read is looked for: far longer than any of
/// this server's transactions; an id whose transaction rolled back (or a
/// sequence that skipped it) is never filled.
const HOLE_WAIT: Duration = Duration::from_secs(30);

/// Most ids looked for at once; a larger jump (a restored database) is not
/// tracked id by id.
const MOST_HOLES: usize = 1_000;

/// A row as fanned out: `late` when it fills an id skipped earlier.
#[derive(Clone)]
struct Live {
    row: Arc<TimelineEntry>,
    late: bool,
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
                let _ = self.live.send(Live {
                    row: Arc::new(row),
                    late: false,
                });
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
            let _ = self.live.send(Live {
                row: Arc::new(row),
                late: true,
            });
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
    let stream = async_stream::stream! {
        let mut sent = start;
        // Backlog from the database, page by page.
        loop {
            match db.timeline_since(sent, PAGE).await {
                Ok(rows) if !rows.is_empty() => {
                    for row in &rows {
                        sent = row.id;
                        yield Ok(event(row));
                    }
                }
                Ok(_) => break,
                Err(_) => break,
            }
        }
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = live.recv() => next,
            };
            match next {
                Ok(Live { row, late: false }) if row.id > sent => {
                    sent = row.id;
                    yield Ok(event(&row));
                }
                // Skipped by the feed's read, committed since: everyone
                // following from before its id is owed it.
                Ok(Live { row, late: true }) if row.id > start => {
                    yield Ok(event(&row));
                }
                Ok(_) => {}
                // Too slow for the live channel: catch up from the database.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    while let Ok(rows) = db.timeline_since(sent, PAGE).await {
                        if rows.is_empty() {
                            break;
                        }
                        for row in &rows {
                            sent = row.id;
                            yield Ok(event(row));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
