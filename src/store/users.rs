//! Console accounts and their log-in sessions. Every change writes its audit
//! entry in the same transaction: no change without its record, no record
//! of a change that did not happen.

use super::audit::AuditSql;
use super::backend::Affected;
use super::{AuditEntry, Db, StoreError, now_ms};
use pingantong_domain::Role;
use sqlx::SqlStr;

/// Longest username, in characters.
pub const USERNAME_MAX: usize = 64;

/// An account to create. The password arrives already hashed (an argon2 PHC
/// string): the store never sees a password.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    pub username: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    /// Required for (and only for) a carer's account.
    pub carer_id: Option<i64>,
    /// For a carer, taken from the carer when not given.
    pub provider_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "username must be 1 to {USERNAME_MAX} letters, digits or . _ - @ (no spaces or control characters)"
    )]
    BadUsername,
    #[error("username {0:?} is taken")]
    Taken(String),
    #[error("a carer's account needs the carer's id")]
    CarerIdMissing,
    #[error("only a carer's account is tied to a carer")]
    CarerIdNotCarer,
    #[error("carer {0} does not exist")]
    UnknownCarer(i64),
    #[error("provider {0} does not exist")]
    UnknownProvider(i64),
    #[error("carer {carer} works for provider {actual}, not {given}")]
    ProviderMismatch { carer: i64, actual: i64, given: i64 },
    #[error("user {0:?} does not exist")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for UserError {
    fn from(e: sqlx::Error) -> Self {
        UserError::Store(e.into())
    }
}

/// What a log-in needs to know about an account.
#[derive(Debug, Clone)]
pub struct LoginUser {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub disabled: bool,
    /// Failed log-ins since the last good one.
    pub failed_logins: i32,
    /// Refuses log-ins until then (ms since the epoch), after too many failures.
    pub locked_until: Option<i64>,
}

/// What an admin (or the command line) changes about an account.
#[derive(Debug, Clone, Copy)]
enum AccountChange {
    Disable,
    Enable,
    Unlock,
}

/// An account as an admin sees it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserSummary {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub carer_id: Option<i64>,
    pub provider_id: Option<i64>,
    pub disabled: bool,
    /// Refuses log-ins until then after too many failures (ms since the epoch).
    pub locked_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Sessions neither logged out nor expired.
    pub live_sessions: i64,
}

type UserSummaryRow = (
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    bool,
    Option<i64>,
    i64,
    i64,
    i64,
);

/// The account behind a session token, with the session's own state.
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub user_id: i64,
    pub username: String,
    pub role: Role,
    pub carer_id: Option<i64>,
    pub provider_id: Option<i64>,
    pub disabled: bool,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Last used (a request, an open feed); the log-in at first.
    pub last_seen_at: i64,
    /// How long it may rest unused; `None`: no idle limit.
    pub idle_ms: Option<i64>,
}

impl SessionUser {
    /// Usable at `now`: not revoked, not expired (absolute or idle), account
    /// not disabled.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at && !self.idle_at(now) && !self.disabled
    }

    /// Unused for longer than its idle limit at `now`.
    pub fn idle_at(&self, now: i64) -> bool {
        self.idle_ms
            .is_some_and(|idle| now.saturating_sub(self.last_seen_at) >= idle)
    }

    /// Whether a use at `now` should be written down: often enough that the
    /// idle limit is measured to within a quarter of itself, at most once a
    /// minute per session.
    pub fn worth_touching(&self, now: i64) -> bool {
        let every = self.idle_ms.map_or(60_000, |i| (i / 4).min(60_000));
        now.saturating_sub(self.last_seen_at) >= every
    }
}

/// A name a person can read aloud and an audit line cannot be confused by.
pub fn valid_username(name: &str) -> bool {
    let n = name.chars().count();
    (1..=USERNAME_MAX).contains(&n)
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

/// The first bytes of a session's token hash, in hex: names the session in
/// the audit log without giving anything away.
pub fn session_ref(token_hash: &[u8]) -> String {
    token_hash
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

type SessionRow = (
    i64,
    String,
    String,
    Option<i64>,
    Option<i64>,
    bool,
    i64,
    Option<i64>,
    i64,
    Option<i64>,
);

type LoginRow = (i64, String, String, String, bool, i32, Option<i64>);

/// The accounts' and sessions' statements, written once for both backends
/// (see [`super::tx`]): called on a connection of the backend's pool.
/// A transaction begins with `begin` ([`Db::begin_write`]), handed to sqlx
/// as a [`SqlStr`]: as a `&'static str` the compiler fails to prove the
/// callers' futures `Send`.
pub(crate) trait UserSql {
    /// The provider carer `carer` works for, if the carer exists.
    async fn carer_provider(&mut self, carer: i64) -> Result<Option<(i64,)>, sqlx::Error>;
    /// Provider `provider`'s id, if it exists.
    async fn provider_row(&mut self, provider: i64) -> Result<Option<(i64,)>, sqlx::Error>;
    /// Insert an account and its audit entry, in a transaction begun with
    /// `begin`; the new id.
    async fn insert_user(
        &mut self,
        begin: &'static str,
        u: &NewUser<'_>,
        provider_id: Option<i64>,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<i64, sqlx::Error>;
    /// Change an account's state, and audit it if it exists: whether it did.
    async fn update_account(
        &mut self,
        begin: &'static str,
        username: &str,
        disabled: Option<bool>,
        unlock: bool,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
    /// Every account with its live sessions at `now`, by name.
    async fn user_rows(&mut self, now: i64) -> Result<Vec<UserSummaryRow>, sqlx::Error>;
    /// Set a password, end the account's sessions and audit it: whether the
    /// account exists.
    async fn set_password(
        &mut self,
        begin: &'static str,
        username: &str,
        password_hash: &str,
        actor: &str,
        subject: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
    /// The account a log-in names.
    async fn login_row(&mut self, username: &str) -> Result<Option<LoginRow>, sqlx::Error>;
    /// Count a failed log-in, locking the account at `limit`: whether it did.
    async fn count_failed_login(
        &mut self,
        begin: &'static str,
        user_id: i64,
        subject: &str,
        limit: i32,
        locked_until: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
    async fn clear_failed_logins(&mut self, user_id: i64) -> Result<(), sqlx::Error>;
    /// Insert a session and audit the log-in.
    #[allow(clippy::too_many_arguments)]
    async fn insert_session(
        &mut self,
        begin: &'static str,
        token_hash: &[u8; 32],
        user_id: i64,
        expires_at: i64,
        idle_ms: i64,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<(), sqlx::Error>;
    /// The session a token hash names, with its account.
    async fn session_row(&mut self, token_hash: &[u8]) -> Result<Option<SessionRow>, sqlx::Error>;
    async fn touch_session(&mut self, token_hash: &[u8], now: i64) -> Result<(), sqlx::Error>;
    /// End a session and audit it: whether it was still open.
    async fn end_session(
        &mut self,
        begin: &'static str,
        token_hash: &[u8],
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error>;
}

impl<C> UserSql for C
where
    C: sqlx::Connection + AuditSql,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    <C::Database as sqlx::Database>::QueryResult: Affected,
    for<'q> i64: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    i64: sqlx::Type<C::Database>,
    for<'q> Option<i64>: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    Option<i64>: sqlx::Type<C::Database>,
    for<'q> i32: sqlx::Decode<'q, C::Database>,
    i32: sqlx::Type<C::Database>,
    for<'q> bool: sqlx::Encode<'q, C::Database> + sqlx::Decode<'q, C::Database>,
    bool: sqlx::Type<C::Database>,
    for<'q> Option<bool>: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> String: sqlx::Decode<'q, C::Database>,
    String: sqlx::Type<C::Database>,
    for<'q> &'q str: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    for<'q> &'q [u8]: sqlx::Encode<'q, C::Database> + sqlx::Type<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
{
    async fn carer_provider(&mut self, carer: i64) -> Result<Option<(i64,)>, sqlx::Error> {
        sqlx::query_as("SELECT provider_id FROM carers WHERE id = $1")
            .bind(carer)
            .fetch_optional(self)
            .await
    }

    async fn provider_row(&mut self, provider: i64) -> Result<Option<(i64,)>, sqlx::Error> {
        sqlx::query_as("SELECT id FROM providers WHERE id = $1")
            .bind(provider)
            .fetch_optional(self)
            .await
    }

    async fn insert_user(
        &mut self,
        begin: &'static str,
        u: &NewUser<'_>,
        provider_id: Option<i64>,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<i64, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO users (username, password_hash, role, carer_id, provider_id, \
             disabled, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
        )
        .bind(u.username)
        .bind(u.password_hash)
        .bind(u.role.as_str())
        .bind(u.carer_id)
        .bind(provider_id)
        .bind(false)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.append_audit(entry, now).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn update_account(
        &mut self,
        begin: &'static str,
        username: &str,
        disabled: Option<bool>,
        unlock: bool,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let changed = sqlx::query(
            "UPDATE users SET disabled = COALESCE($1, disabled), \
             failed_logins = CASE WHEN $2 THEN 0 ELSE failed_logins END, \
             locked_until = CASE WHEN $2 THEN NULL ELSE locked_until END, \
             updated_at = $3 WHERE username = $4",
        )
        .bind(disabled)
        .bind(unlock)
        .bind(now)
        .bind(username)
        .execute(&mut *tx)
        .await?
        .affected()
            == 1;
        if changed {
            tx.append_audit(entry, now).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn user_rows(&mut self, now: i64) -> Result<Vec<UserSummaryRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT u.id, u.username, u.role, u.carer_id, u.provider_id, u.disabled, \
             CASE WHEN u.locked_until > $1 THEN u.locked_until END AS locked_until, \
             u.created_at, u.updated_at, \
             (SELECT COUNT(*) FROM sessions s WHERE s.user_id = u.id \
              AND s.revoked_at IS NULL AND s.expires_at > $1) AS live_sessions \
             FROM users u ORDER BY u.username",
        )
        .bind(now)
        .fetch_all(self)
        .await
    }

    async fn set_password(
        &mut self,
        begin: &'static str,
        username: &str,
        password_hash: &str,
        actor: &str,
        subject: &str,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let id: Option<(i64,)> = sqlx::query_as(
            "UPDATE users SET password_hash = $1, updated_at = $2 WHERE username = $3 \
             RETURNING id",
        )
        .bind(password_hash)
        .bind(now)
        .bind(username)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id,)) = id {
            let ended = sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .affected();
            let detail = format!("{ended} open session(s) ended");
            let entry = AuditEntry {
                actor,
                action: "password_reset",
                subject,
                detail: &detail,
            };
            tx.append_audit(&entry, now).await?;
        }
        tx.commit().await?;
        Ok(id.is_some())
    }

    async fn login_row(&mut self, username: &str) -> Result<Option<LoginRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, username, password_hash, role, disabled, failed_logins, locked_until \
             FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(self)
        .await
    }

    async fn count_failed_login(
        &mut self,
        begin: &'static str,
        user_id: i64,
        subject: &str,
        limit: i32,
        locked_until: i64,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let (failed,): (i32,) = sqlx::query_as(
            "UPDATE users SET failed_logins = failed_logins + 1 WHERE id = $1 \
             RETURNING failed_logins",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        let lock = failed >= limit;
        if lock {
            sqlx::query("UPDATE users SET failed_logins = 0, locked_until = $1 WHERE id = $2")
                .bind(locked_until)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            let detail = format!("{failed} failed log-ins in a row; locked until {locked_until}");
            let entry = AuditEntry {
                actor: "system",
                action: "login_locked",
                subject,
                detail: &detail,
            };
            tx.append_audit(&entry, now).await?;
        }
        tx.commit().await?;
        Ok(lock)
    }

    async fn clear_failed_logins(&mut self, user_id: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET failed_logins = 0 WHERE id = $1 AND failed_logins <> 0")
            .bind(user_id)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn insert_session(
        &mut self,
        begin: &'static str,
        token_hash: &[u8; 32],
        user_id: i64,
        expires_at: i64,
        idle_ms: i64,
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at, \
             last_seen_at, idle_ms) VALUES ($1, $2, $3, $4, $3, $5)",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .bind(idle_ms)
        .execute(&mut *tx)
        .await?;
        tx.append_audit(entry, now).await?;
        tx.commit().await
    }

    async fn session_row(&mut self, token_hash: &[u8]) -> Result<Option<SessionRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT u.id, u.username, u.role, u.carer_id, u.provider_id, u.disabled, \
             s.expires_at, s.revoked_at, COALESCE(s.last_seen_at, s.created_at), s.idle_ms \
             FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self)
        .await
    }

    async fn touch_session(&mut self, token_hash: &[u8], now: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE sessions SET last_seen_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(self)
        .await?;
        Ok(())
    }

    async fn end_session(
        &mut self,
        begin: &'static str,
        token_hash: &[u8],
        entry: &AuditEntry<'_>,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut tx = self.begin_with(SqlStr::from_static(begin)).await?;
        let revoked = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?
        .affected()
            == 1;
        if revoked {
            tx.append_audit(entry, now).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }
}

// Each backend's pool, chosen by a match: the statements above are the same
// for both. Reads go to the read pool, writes to the write pool.
impl Db {
    /// Create an account, recording who did it. Returns the new user's id.
    pub async fn add_user(&self, u: &NewUser<'_>, actor: &str) -> Result<i64, UserError> {
        if !valid_username(u.username) {
            return Err(UserError::BadUsername);
        }
        let provider_id = match (u.role, u.carer_id) {
            (Role::Carer, None) => return Err(UserError::CarerIdMissing),
            (Role::Carer, Some(carer)) => {
                let row = match self {
                    Db::Sqlite { read, .. } => read.acquire().await?.carer_provider(carer).await,
                    Db::Postgres(p, _) => p.acquire().await?.carer_provider(carer).await,
                }?;
                let (actual,) = row.ok_or(UserError::UnknownCarer(carer))?;
                match u.provider_id {
                    Some(given) if given != actual => {
                        return Err(UserError::ProviderMismatch {
                            carer,
                            actual,
                            given,
                        });
                    }
                    _ => Some(actual),
                }
            }
            (_, Some(_)) => return Err(UserError::CarerIdNotCarer),
            (_, None) => u.provider_id,
        };
        if let Some(provider) = provider_id {
            let row = match self {
                Db::Sqlite { read, .. } => read.acquire().await?.provider_row(provider).await,
                Db::Postgres(p, _) => p.acquire().await?.provider_row(provider).await,
            }?;
            row.ok_or(UserError::UnknownProvider(provider))?;
        }
        let now = now_ms();
        let subject = format!("user:{}", u.username);
        let mut detail = format!("role {}", u.role);
        if let Some(c) = u.carer_id {
            detail.push_str(&format!(", carer {c}"));
        }
        if let Some(p) = provider_id {
            detail.push_str(&format!(", provider {p}"));
        }
        let entry = AuditEntry {
            actor,
            action: "user_added",
            subject: &subject,
            detail: &detail,
        };
        let begin = self.begin_write();
        let inserted = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .insert_user(begin, u, provider_id, &entry, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .insert_user(begin, u, provider_id, &entry, now)
                    .await
            }
        };
        inserted.map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                UserError::Taken(u.username.to_owned())
            }
            e => e.into(),
        })
    }

    /// Disable (or enable again) an account; a disabled account's sessions
    /// stop working at once.
    pub async fn set_user_disabled(
        &self,
        username: &str,
        disabled: bool,
        actor: &str,
    ) -> Result<(), UserError> {
        let change = if disabled {
            AccountChange::Disable
        } else {
            AccountChange::Enable
        };
        self.change_account(username, change, actor).await
    }

    /// Lift a log-in lock before its time, recording who did.
    pub async fn unlock_user(&self, username: &str, actor: &str) -> Result<(), UserError> {
        self.change_account(username, AccountChange::Unlock, actor)
            .await
    }

    /// One change to an account's state and its audit entry, in one transaction.
    async fn change_account(
        &self,
        username: &str,
        change: AccountChange,
        actor: &str,
    ) -> Result<(), UserError> {
        let (disabled, unlock, action) = match change {
            AccountChange::Disable => (Some(true), false, "user_disabled"),
            AccountChange::Enable => (Some(false), false, "user_enabled"),
            AccountChange::Unlock => (None, true, "user_unlocked"),
        };
        let now = now_ms();
        let subject = format!("user:{username}");
        let entry = AuditEntry {
            actor,
            action,
            subject: &subject,
            detail: "",
        };
        let begin = self.begin_write();
        let found = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .update_account(begin, username, disabled, unlock, &entry, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .update_account(begin, username, disabled, unlock, &entry, now)
                    .await
            }
        }?;
        if found {
            Ok(())
        } else {
            Err(UserError::NotFound(username.to_owned()))
        }
    }

    /// Every account, by name: what an admin needs to manage them (never a
    /// password hash).
    pub async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        let now = now_ms();
        let rows = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.user_rows(now).await,
            Db::Postgres(p, _) => p.acquire().await?.user_rows(now).await,
        }?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(UserSummary {
                    id: r.0,
                    username: r.1,
                    role: Role::parse(&r.2)?,
                    carer_id: r.3,
                    provider_id: r.4,
                    disabled: r.5,
                    locked_until: r.6,
                    created_at: r.7,
                    updated_at: r.8,
                    live_sessions: r.9,
                })
            })
            .collect())
    }

    /// Give an account a new password (already hashed): its open sessions end
    /// with the old one, in the same transaction as the change and its audit
    /// entry (the password itself is never recorded).
    pub async fn reset_password(
        &self,
        username: &str,
        password_hash: &str,
        actor: &str,
    ) -> Result<(), UserError> {
        let now = now_ms();
        let subject = format!("user:{username}");
        let begin = self.begin_write();
        let found = match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .set_password(begin, username, password_hash, actor, &subject, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .set_password(begin, username, password_hash, actor, &subject, now)
                    .await
            }
        }?;
        if found {
            Ok(())
        } else {
            Err(UserError::NotFound(username.to_owned()))
        }
    }

    /// The account a log-in names, if there is one (and its role is one this
    /// server knows: an account it cannot place gets no session).
    pub async fn login_user(&self, username: &str) -> Result<Option<LoginUser>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.login_row(username).await,
            Db::Postgres(p, _) => p.acquire().await?.login_row(username).await,
        }?;
        Ok(row.and_then(
            |(id, username, password_hash, role, disabled, failed_logins, locked_until)| {
                Some(LoginUser {
                    id,
                    username,
                    password_hash,
                    role: Role::parse(&role)?,
                    disabled,
                    failed_logins,
                    locked_until,
                })
            },
        ))
    }

    /// Count a failed log-in against an account; at `limit` failures in a row
    /// it is locked until `locked_until`, audited in the same transaction.
    /// Returns whether this failure locked it.
    pub async fn note_failed_login(
        &self,
        user_id: i64,
        username: &str,
        limit: i32,
        locked_until: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let subject = format!("user:{username}");
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .count_failed_login(begin, user_id, &subject, limit, locked_until, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .count_failed_login(begin, user_id, &subject, limit, locked_until, now)
                    .await
            }
        }?)
    }

    /// A good log-in: the failures before it no longer count.
    pub async fn clear_failed_logins(&self, user_id: i64) -> Result<(), StoreError> {
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.clear_failed_logins(user_id).await,
            Db::Postgres(p, _) => p.acquire().await?.clear_failed_logins(user_id).await,
        }?)
    }

    /// Open a session for `user`, known by the SHA-256 of its token, and
    /// record the log-in.
    pub async fn open_session(
        &self,
        token_hash: &[u8; 32],
        user: &LoginUser,
        expires_at: i64,
        idle_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let who = format!("user:{}", user.username);
        let detail = format!(
            "session {}, role {}, expires at {expires_at}",
            session_ref(token_hash),
            user.role
        );
        let entry = AuditEntry {
            actor: &who,
            action: "login",
            subject: &who,
            detail: &detail,
        };
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .insert_session(begin, token_hash, user.id, expires_at, idle_ms, &entry, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .insert_session(begin, token_hash, user.id, expires_at, idle_ms, &entry, now)
                    .await
            }
        }?)
    }

    /// The session a token hash names, with its account; `None` when there is
    /// no such session. Whether it is still live is the caller's question
    /// ([`SessionUser::is_live`]).
    pub async fn session_user(&self, token_hash: &[u8]) -> Result<Option<SessionUser>, StoreError> {
        let row = match self {
            Db::Sqlite { read, .. } => read.acquire().await?.session_row(token_hash).await,
            Db::Postgres(p, _) => p.acquire().await?.session_row(token_hash).await,
        }?;
        Ok(row.and_then(|r| {
            Some(SessionUser {
                user_id: r.0,
                username: r.1,
                role: Role::parse(&r.2)?,
                carer_id: r.3,
                provider_id: r.4,
                disabled: r.5,
                expires_at: r.6,
                revoked_at: r.7,
                last_seen_at: r.8,
                idle_ms: r.9,
            })
        }))
    }

    /// The session was used at `now` (it does not idle out meanwhile).
    pub async fn touch_session(&self, token_hash: &[u8], now: i64) -> Result<(), StoreError> {
        Ok(match self {
            Db::Sqlite { write, .. } => write.acquire().await?.touch_session(token_hash, now).await,
            Db::Postgres(p, _) => p.acquire().await?.touch_session(token_hash, now).await,
        }?)
    }

    /// End a session (log-out) and record it. `false` when it had already ended.
    pub async fn revoke_session(
        &self,
        token_hash: &[u8],
        username: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let who = format!("user:{username}");
        let detail = format!("session {}", session_ref(token_hash));
        let entry = AuditEntry {
            actor: &who,
            action: "logout",
            subject: &who,
            detail: &detail,
        };
        let begin = self.begin_write();
        Ok(match self {
            Db::Sqlite { write, .. } => {
                write
                    .acquire()
                    .await?
                    .end_session(begin, token_hash, &entry, now)
                    .await
            }
            Db::Postgres(p, _) => {
                p.acquire()
                    .await?
                    .end_session(begin, token_hash, &entry, now)
                    .await
            }
        }?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["li.wei", "operator_07", "陈秀英", "a", "ops@yuexiu"] {
            assert!(valid_username(ok), "{ok}");
        }
        let long = "x".repeat(USERNAME_MAX + 1);
        for bad in ["", "li wei", "li\nwei", "user:li", long.as_str()] {
            assert!(!valid_username(bad), "{bad:?}");
        }
    }
}
