//! Every telemetry point is a named event that emits its log line and its
//! metric together, so the two never drift apart. Tags stay low-cardinality:
//! device ids go to logs, never to metric labels.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use tracing::{debug, error, info, warn};

pub struct ListenerStarted<'a> {
    pub protocol: &'static str,
    pub addr: &'a SocketAddr,
}

impl ListenerStarted<'_> {
    pub fn emit(self) {
        info!(protocol = self.protocol, addr = %self.addr, "listening");
    }
}

pub struct ConnectionOpened {
    pub protocol: &'static str,
}

impl ConnectionOpened {
    pub fn emit(self) {
        counter!("pat_connections_opened_total", "protocol" => self.protocol).increment(1);
        gauge!("pat_connections", "protocol" => self.protocol).increment(1.0);
    }
}

pub struct ConnectionClosed<'a> {
    pub protocol: &'static str,
    pub peer: &'a SocketAddr,
    pub reason: &'static str,
}

impl ConnectionClosed<'_> {
    pub fn emit(self) {
        gauge!("pat_connections", "protocol" => self.protocol).decrement(1.0);
        counter!("pat_connections_closed_total", "protocol" => self.protocol, "reason" => self.reason)
            .increment(1);
        debug!(protocol = self.protocol, peer = %self.peer, reason = self.reason, "connection closed");
    }
}

pub struct ConnectionRefused {
    pub protocol: &'static str,
    pub reason: &'static str,
}

impl ConnectionRefused {
    pub fn emit(self) {
        counter!("pat_connections_refused_total", "protocol" => self.protocol, "reason" => self.reason)
            .increment(1);
        warn!(
            protocol = self.protocol,
            reason = self.reason,
            "connection refused"
        );
    }
}

pub struct FrameRejected<'a> {
    pub protocol: &'static str,
    pub peer: &'a SocketAddr,
    pub reason: &'static str,
    pub detail: &'a dyn std::fmt::Display,
}

impl FrameRejected<'_> {
    pub fn emit(self) {
        counter!("pat_frames_rejected_total", "protocol" => self.protocol, "reason" => self.reason)
            .increment(1);
        warn!(protocol = self.protocol, peer = %self.peer, reason = self.reason, detail = %self.detail, "frame rejected");
    }
}

pub struct UnverifiedEvent<'a> {
    pub protocol: &'static str,
    pub device: &'a str,
    pub auth: &'static str,
    pub kind: &'a str,
}

impl UnverifiedEvent<'_> {
    pub fn emit(self) {
        counter!("pat_unverified_events_total", "protocol" => self.protocol, "auth" => self.auth)
            .increment(1);
        warn!(
            protocol = self.protocol,
            device = self.device,
            auth = self.auth,
            kind = self.kind,
            "event from an unverified device stored"
        );
    }
}

pub struct BatchCommitted {
    pub size: usize,
    pub elapsed: Duration,
}

impl BatchCommitted {
    pub fn emit(self) {
        counter!("pat_events_committed_total").increment(self.size as u64);
        histogram!("pat_commit_seconds").record(self.elapsed.as_secs_f64());
        histogram!("pat_commit_batch_size").record(self.size as f64);
    }
}

/// The SQLite write-ahead log copied into the database file, by the
/// checkpointer rather than inside a commit.
pub struct WalCheckpointed {
    /// Frames in the log, and how many of them are in the database now.
    pub logged: i64,
    pub copied: i64,
    pub elapsed: Duration,
}

impl WalCheckpointed {
    pub fn emit(self) {
        histogram!("pat_wal_checkpoint_seconds").record(self.elapsed.as_secs_f64());
        gauge!("pat_wal_frames").set(self.logged as f64);
        debug!(
            logged = self.logged,
            copied = self.copied,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "write-ahead log checkpointed"
        );
    }
}

/// PostgreSQL's planner statistics refreshed for tables that had none or
/// stale ones.
pub struct StatisticsRefreshed<'a> {
    pub tables: &'a [String],
    pub elapsed: Duration,
}

impl StatisticsRefreshed<'_> {
    pub fn emit(self) {
        counter!("pat_statistics_refreshed_total").increment(self.tables.len() as u64);
        info!(
            tables = %self.tables.join(", "),
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "planner statistics refreshed"
        );
    }
}

/// A verified device's heartbeat, answered once noted (no row of its own).
pub struct HeartbeatNoted;

impl HeartbeatNoted {
    pub fn emit(self) {
        counter!("pat_heartbeats_noted_total").increment(1);
    }
}

/// Devices' latest reports written (one row per device).
pub struct PresenceWritten {
    pub devices: usize,
    pub elapsed: Duration,
}

impl PresenceWritten {
    pub fn emit(self) {
        counter!("pat_presence_rows_written_total").increment(self.devices as u64);
        histogram!("pat_presence_write_seconds").record(self.elapsed.as_secs_f64());
        debug!(
            devices = self.devices,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "device presence written"
        );
    }
}

/// The incident stage applied a batch of alarms in one transaction.
pub struct StageBatch {
    pub size: usize,
    /// Rules and directory: deciding what each alarm needs.
    pub prepare: Duration,
    pub transaction: Duration,
    /// Telling who must know: offers published and marked, the feed, the notifier.
    pub after: Duration,
}

impl StageBatch {
    pub fn emit(self) {
        histogram!("pat_stage_batch_size").record(self.size as f64);
        histogram!("pat_stage_batch_seconds", "phase" => "prepare")
            .record(self.prepare.as_secs_f64());
        histogram!("pat_stage_batch_seconds", "phase" => "transaction")
            .record(self.transaction.as_secs_f64());
        histogram!("pat_stage_batch_seconds", "phase" => "after").record(self.after.as_secs_f64());
        debug!(
            size = self.size,
            prepare_ms = self.prepare.as_secs_f64() * 1e3,
            ms = self.transaction.as_secs_f64() * 1e3,
            after_ms = self.after.as_secs_f64() * 1e3,
            "stage batch applied"
        );
    }
}

pub struct CommitFailed<'a> {
    pub size: usize,
    pub error: &'a dyn std::fmt::Display,
}

impl CommitFailed<'_> {
    pub fn emit(self) {
        counter!("pat_commit_failures_total").increment(1);
        error!(size = self.size, error = %self.error, "commit failed; senders are told to retry");
    }
}

/// The database stopped taking commits (one failed for want of it, or one
/// has waited too long): said once, when it happens.
pub struct DatabaseDown<'a> {
    pub reason: &'a dyn std::fmt::Display,
}

impl DatabaseDown<'_> {
    pub fn emit(self) {
        gauge!("pat_database_up").set(0.0);
        counter!("pat_database_outages_total").increment(1);
        error!(reason = %self.reason, "database unavailable; what is read is held and answered once committed");
    }
}

/// The database takes commits again (`down_for`), or the writer starts
/// (`None`: the gauge is there before the first outage).
pub struct DatabaseUp {
    pub down_for: Option<Duration>,
}

impl DatabaseUp {
    pub fn emit(self) {
        gauge!("pat_database_up").set(1.0);
        if let Some(d) = self.down_for {
            warn!(
                down_ms = d.as_millis() as u64,
                "database back; held records committed"
            );
        }
    }
}

/// Records read and waiting for the database (0 once it is back).
pub struct RecordsHeld {
    pub records: usize,
}

impl RecordsHeld {
    pub fn emit(self) {
        gauge!("pat_store_held_records").set(self.records as f64);
        debug!(records = self.records, "records held for the database");
    }
}

/// A batch the database could not take, held to be tried again.
pub struct CommitHeld<'a> {
    pub records: usize,
    pub retry_in: Duration,
    pub error: &'a dyn std::fmt::Display,
}

impl CommitHeld<'_> {
    pub fn emit(self) {
        counter!("pat_commit_retries_total").increment(1);
        // One line a retry, at most every 2 s: the outage's own line is DatabaseDown.
        warn!(
            records = self.records,
            retry_in_ms = self.retry_in.as_millis() as u64,
            error = %self.error,
            "commit held; trying again"
        );
    }
}

pub struct HandOverDeferred {
    pub alarm_id: i64,
}

impl HandOverDeferred {
    pub fn emit(self) {
        counter!("pat_handover_deferred_total").increment(1);
        // A flood defers thousands a second: the counter tells, the log would drown.
        debug!(
            alarm = self.alarm_id,
            "incident queue full; the recovery sweep will hand this alarm over"
        );
    }
}

pub struct IncidentOpened<'a> {
    pub incident: i64,
    pub device: &'a str,
    pub kind: &'a str,
    pub verified: bool,
}

impl IncidentOpened<'_> {
    pub fn emit(self) {
        counter!("pat_incidents_opened_total", "verified" => if self.verified { "yes" } else { "no" })
            .increment(1);
        info!(
            incident = self.incident,
            device = self.device,
            kind = self.kind,
            verified = self.verified,
            "incident opened"
        );
    }
}

pub struct IncidentFolded {
    pub incident: i64,
}

impl IncidentFolded {
    pub fn emit(self) {
        counter!("pat_presses_folded_total").increment(1);
        info!(
            incident = self.incident,
            "further press folded into the open incident"
        );
    }
}

pub struct NoCarerAvailable {
    pub incident: i64,
}

impl NoCarerAvailable {
    pub fn emit(self) {
        counter!("pat_no_carer_available_total").increment(1);
        warn!(
            incident = self.incident,
            "no carer available; the operator queue holds the incident"
        );
    }
}

pub struct DispatchPublished {
    pub dispatch: i64,
    pub carer: i64,
}

impl DispatchPublished {
    pub fn emit(self) {
        counter!("pat_dispatches_published_total").increment(1);
        info!(
            dispatch = self.dispatch,
            carer = self.carer,
            "dispatch offer published"
        );
    }
}

pub struct StageFailed<'a> {
    pub stage: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl StageFailed<'_> {
    pub fn emit(self) {
        counter!("pat_stage_failures_total", "stage" => self.stage).increment(1);
        error!(stage = self.stage, error = %self.error, "stage failed; will retry from the database");
    }
}

/// The open-file limit the server got at start, against what its
/// `max_connections` needs (one descriptor per device connection).
pub struct OpenFilesLimit {
    pub soft: u64,
    pub hard: u64,
    pub wanted: u64,
    /// Device connections the limit leaves room for.
    pub room: u64,
}

impl OpenFilesLimit {
    pub fn emit(self) {
        gauge!("pat_open_files_limit").set(self.soft as f64);
        info!(limit = self.soft, hard_limit = self.hard, "open-file limit");
        if self.soft < self.wanted {
            warn!(
                limit = self.soft,
                wanted = self.wanted,
                "open-file limit too low for max_connections: past about {} device connections \
                 new ones wait unaccepted until others close; raise LimitNOFILE (README, \"Open files\")",
                self.room
            );
        }
    }
}

pub struct OpenFilesLimitUnknown<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl OpenFilesLimitUnknown<'_> {
    pub fn emit(self) {
        warn!(error = %self.error, "open-file limit unknown; device connections may be refused early");
    }
}

pub struct MqttConnection {
    pub up: bool,
    pub detail: String,
}

impl MqttConnection {
    pub fn emit(self) {
        gauge!("pat_mqtt_connected").set(if self.up { 1.0 } else { 0.0 });
        if self.up {
            info!(detail = %self.detail, "MQTT connected");
        } else {
            counter!("pat_mqtt_disconnects_total").increment(1);
            warn!(detail = %self.detail, "MQTT down; retrying");
        }
    }
}

pub struct ReplyRefused<'a> {
    /// Low-cardinality: `withdrawn`, `out_of_order`, `not_yours`, `malformed` …
    pub reason: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl ReplyRefused<'_> {
    pub fn emit(self) {
        counter!("pat_carer_replies_refused_total", "reason" => self.reason).increment(1);
        warn!(reason = self.reason, error = %self.error, "carer reply refused");
    }
}

/// A carer was told that an offer was taken back (its incident ended).
pub struct OfferWithdrawn<'a> {
    pub dispatch: i64,
    pub carer: i64,
    pub incident: i64,
    pub reason: &'a str,
}

impl OfferWithdrawn<'_> {
    pub fn emit(self) {
        counter!("pat_offers_withdrawn_total").increment(1);
        info!(
            dispatch = self.dispatch,
            carer = self.carer,
            incident = self.incident,
            reason = self.reason,
            "offer withdrawn"
        );
    }
}

pub struct SupervisorAlert<'a> {
    pub incident: i64,
    pub kind: &'a str,
    pub why: &'a str,
}

impl SupervisorAlert<'_> {
    pub fn emit(self) {
        counter!("pat_supervisor_alerts_total", "kind" => self.kind.to_owned()).increment(1);
        warn!(
            incident = self.incident,
            kind = self.kind,
            why = self.why,
            "supervisors alerted"
        );
    }
}

pub struct FamilyNotified<'a> {
    pub incident: i64,
    pub channel: &'a str,
    pub attempts: i64,
}

impl FamilyNotified<'_> {
    pub fn emit(self) {
        counter!("pat_family_notices_total", "channel" => self.channel.to_owned(), "result" => "delivered")
            .increment(1);
        info!(
            incident = self.incident,
            channel = self.channel,
            attempts = self.attempts,
            "family notified"
        );
    }
}

pub struct FamilyNoticeFailed<'a> {
    pub incident: i64,
    pub channel: &'a str,
    pub attempts: i64,
    pub error: &'a str,
}

impl FamilyNoticeFailed<'_> {
    pub fn emit(self) {
        counter!("pat_family_notices_total", "channel" => self.channel.to_owned(), "result" => "failed_attempt")
            .increment(1);
        warn!(
            incident = self.incident,
            channel = self.channel,
            attempts = self.attempts,
            error = self.error,
            "family notice attempt failed"
        );
    }
}

pub struct JobCleared<'a> {
    pub incident: i64,
    pub kind: &'a str,
}

impl JobCleared<'_> {
    pub fn emit(self) {
        counter!("pat_jobs_cleared_total").increment(1);
        info!(
            incident = self.incident,
            kind = self.kind,
            "technical job cleared by the device"
        );
    }
}

pub struct DeviceOffline<'a> {
    pub device: &'a str,
}

impl DeviceOffline<'_> {
    pub fn emit(self) {
        counter!("pat_devices_offline_total").increment(1);
        warn!(
            device = self.device,
            "device offline: no report within its allowance"
        );
    }
}

pub struct DeviceBackOnline<'a> {
    pub device: &'a str,
}

impl DeviceBackOnline<'_> {
    pub fn emit(self) {
        counter!("pat_devices_back_online_total").increment(1);
        info!(device = self.device, "device back online");
    }
}

pub struct LoginAttempt<'a> {
    /// `ok`, `bad_credentials`, `disabled`, `busy`.
    pub outcome: &'static str,
    /// Only for a successful log-in: a failed one's name may be a mistyped
    /// password, and the audit log keeps it for those allowed to read it.
    pub username: Option<&'a str>,
}

impl LoginAttempt<'_> {
    pub fn emit(self) {
        counter!("pat_logins_total", "outcome" => self.outcome).increment(1);
        match self.username {
            Some(user) => info!(user, "console log-in"),
            None => warn!(outcome = self.outcome, "console log-in refused"),
        }
    }
}

pub struct RequestFailed<'a> {
    pub error: &'a dyn std::fmt::Display,
}

impl RequestFailed<'_> {
    pub fn emit(self) {
        counter!("pat_http_internal_errors_total").increment(1);
        error!(error = %self.error, "HTTP request failed");
    }
}

/// A service-level report was computed (for the city, the CLI or the API).
pub struct ReportBuilt<'a> {
    /// `monthly` or `breaches`.
    pub report: &'static str,
    /// The grouping: `provider`, `district`, `street`, `category`, `incident`.
    pub by: &'static str,
    /// `YYYY-MM`: logged, never a metric label.
    pub month: &'a str,
    pub incidents: usize,
    pub elapsed: Duration,
}

impl ReportBuilt<'_> {
    pub fn emit(self) {
        counter!("pat_reports_built_total", "report" => self.report, "by" => self.by).increment(1);
        histogram!("pat_report_seconds", "report" => self.report)
            .record(self.elapsed.as_secs_f64());
        info!(
            report = self.report,
            by = self.by,
            month = self.month,
            incidents = self.incidents,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "report built"
        );
    }
}

pub struct TestMissed<'a> {
    pub device: &'a str,
}

impl TestMissed<'_> {
    pub fn emit(self) {
        counter!("pat_periodic_tests_missed_total").increment(1);
        warn!(device = self.device, "periodic test missed");
    }
}

/// A live feed ended because its session no longer entitles it (logged out,
/// expired, account disabled or given another role).
pub struct FeedClosed<'a> {
    pub user: &'a str,
    pub reason: &'static str,
}

impl FeedClosed<'_> {
    pub fn emit(self) {
        counter!("pat_feed_closed_total", "reason" => self.reason).increment(1);
        info!(
            user = self.user,
            reason = self.reason,
            "live feed closed: its session ended"
        );
    }
}

/// The embedded broker's gate refused a connection.
pub struct MqttConnectRefused<'a> {
    /// Low-cardinality: `bad_credentials`, `anonymous`, `reserved_client_id`, `bad_client_id`,
    /// `will_denied`, `registry_down`, `protocol`.
    pub reason: &'static str,
    /// The username offered (never the password); empty when none.
    pub username: &'a str,
    pub peer: std::net::SocketAddr,
}

impl MqttConnectRefused<'_> {
    pub fn emit(self) {
        counter!("pat_mqtt_connects_refused_total", "reason" => self.reason).increment(1);
        warn!(reason = self.reason, username = self.username, peer = %self.peer, "MQTT connection refused");
    }
}

/// The gate dropped a publish or refused a subscription outside the client's topics.
pub struct MqttDenied<'a> {
    /// `publish` or `subscribe`.
    pub action: &'static str,
    /// `devices/<id>`, `carers/<id>`, `bridges/<name>`, `servers/<name>` or `quarantine/<client id>`.
    pub who: &'a str,
    pub topic: &'a str,
    /// Log it (with how many were held back since this session's last
    /// line), or only count it.
    pub log: Option<u64>,
}

impl MqttDenied<'_> {
    pub fn emit(self) {
        counter!("pat_mqtt_denied_total", "action" => self.action).increment(1);
        let Some(held) = self.log else {
            return;
        };
        // A bridge publishes all its devices' chatter; only the adapters' topics are taken.
        if self.who.starts_with("bridges/") {
            debug!(
                action = self.action,
                who = self.who,
                topic = self.topic,
                "MQTT access denied"
            );
        } else {
            warn!(
                action = self.action,
                who = self.who,
                topic = self.topic,
                held_back = held,
                "MQTT access denied"
            );
        }
    }
}

/// Values sealed anew under the current data key (encryption switched on,
/// or a rotation), and the older keys then deleted.
pub struct ValuesResealed<'a> {
    pub current: i64,
    pub resealed: u64,
    pub retired: &'a [i64],
}

impl ValuesResealed<'_> {
    pub fn emit(self) {
        counter!("pat_values_resealed_total").increment(self.resealed);
        info!(
            data_key = self.current,
            resealed = self.resealed,
            retired = ?self.retired,
            "sensitive values sealed under the current data key"
        );
    }
}

/// The retention policy applied: what was purged.
pub struct RetentionApplied {
    pub frames: u64,
    pub rejected_frames: u64,
    pub positions: u64,
    pub incidents: u64,
    pub steps: u64,
}

impl RetentionApplied {
    pub fn emit(self) {
        let r = self;
        for (what, n) in [
            ("frames", r.frames),
            ("rejected_frames", r.rejected_frames),
            ("positions", r.positions),
            ("incidents", r.incidents),
            ("steps", r.steps),
        ] {
            counter!("pat_retention_purged_total", "what" => what).increment(n);
        }
        info!(
            frames = r.frames,
            rejected_frames = r.rejected_frames,
            positions = r.positions,
            incidents = r.incidents,
            steps = r.steps,
            "retention applied"
        );
    }
}

/// A device's TLS handshake failed (no common version or cipher, a client
/// that does not trust the certificate, plain text on a TLS port).
pub struct TlsRefused<'a> {
    pub protocol: &'static str,
    pub peer: &'a SocketAddr,
    pub error: &'a dyn std::fmt::Display,
}

impl TlsRefused<'_> {
    pub fn emit(self) {
        counter!("pat_tls_handshakes_failed_total", "protocol" => self.protocol).increment(1);
        debug!(protocol = self.protocol, peer = %self.peer, error = %self.error, "TLS handshake failed");
    }
}

/// This server took its lease on its instance id.
pub struct ClusterJoined<'a> {
    pub instance: &'a str,
}

impl ClusterJoined<'_> {
    pub fn emit(self) {
        counter!("pat_cluster_joins_total").increment(1);
        info!(instance = self.instance, "joined the cluster");
    }
}

/// The set of live servers changed (one joined, stopped or went silent).
pub struct ClusterChanged<'a> {
    /// The live servers' instance ids, comma-separated.
    pub live: &'a str,
}

impl ClusterChanged<'_> {
    pub fn emit(self) {
        counter!("pat_cluster_changes_total").increment(1);
        warn!(live = self.live, "the live servers changed");
    }
}

/// This server's lease was taken by another process with the same instance id.
pub struct LeaseLost<'a> {
    pub instance: &'a str,
}

impl LeaseLost<'_> {
    pub fn emit(self) {
        counter!("pat_cluster_leases_lost_total").increment(1);
        error!(
            instance = self.instance,
            "lease lost: another process runs with this instance id; not ready until it is back"
        );
    }
}
