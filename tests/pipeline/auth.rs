//! Console accounts over HTTP (log-in, sessions, roles) and the audit log's
//! hash chain, on SQLite and PostgreSQL.

use pingantong::domain::Role;
use pingantong::store::{ChainFault, Db, now_ms};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

/// Run one statement on whichever database the test uses.
async fn raw(db: &Db, sql: &'static str) {
    match db {
        Db::Sqlite { write, .. } => {
            sqlx::query(sql).execute(write).await.unwrap();
        }
        Db::Postgres(p, _) => {
            sqlx::query(sql).execute(p).await.unwrap();
        }
    }
}

/// Every audit row as (action, subject, detail).
async fn audit_rows(db: &Db) -> Vec<(String, String, String)> {
    const Q: &str = "SELECT action, subject, detail FROM audit_log ORDER BY id";
    match db {
        Db::Sqlite { read, .. } => sqlx::query_as(Q).fetch_all(read).await.unwrap(),
        Db::Postgres(p, _) => sqlx::query_as(Q).fetch_all(p).await.unwrap(),
    }
}

async fn log_in_use_and_log_out(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    add_user(&app.db, "li.wei", Role::Operator).await;
    let api = Api::of(&app);

    let before = now_ms();
    let (status, body) = api.login("li.wei", PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "operator");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64, "{token}");
    let expires_at = body["expires_at"].as_i64().unwrap();
    let shift = 12 * 3600 * 1000;
    assert!(
        (before + shift..=now_ms() + shift).contains(&expires_at),
        "a session lasts one 12 h shift: {expires_at}"
    );

    let (status, me) = api.get("/api/v1/me", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["username"], "li.wei");
    assert_eq!(me["role"], "operator");
    assert_eq!(me["carer_id"], Value::Null);
    assert!(me.get("token_hash").is_none(), "{me}");

    // A wrong password and an unknown name get the same answer.
    let (wrong_status, wrong) = api.login("li.wei", "not the password").await;
    let (unknown_status, unknown) = api.login("nobody", PASSWORD).await;
    assert_eq!(wrong_status, StatusCode::UNAUTHORIZED);
    assert_eq!((unknown_status, &unknown), (wrong_status, &wrong));
    assert!(wrong["error"].is_string(), "{wrong}");

    for bad in [None, Some("0".repeat(64)), Some("not-a-token".to_owned())] {
        let (status, body) = api.get("/api/v1/me", bad.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        assert!(body["error"].is_string(), "{body}");
    }

    assert_eq!(api.logout(&token).await, StatusCode::NO_CONTENT);
    assert_eq!(
        api.get("/api/v1/me", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(api.logout(&token).await, StatusCode::UNAUTHORIZED);

    // Every step is in the audit log, the names tried included, no password.
    // (Less the test harness's own MQTT credential, issued before the test began.)
    let rows: Vec<_> = audit_rows(&app.db)
        .await
        .into_iter()
        .filter(|r| r.0 != "mqtt_credential_issued")
        .collect();
    let actions: Vec<_> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actions,
        [
            "user_added",
            "login",
            "login_failed",
            "login_failed",
            "logout"
        ]
    );
    assert_eq!(rows[2].1, "user:li.wei");
    assert_eq!(rows[2].2, "wrong password");
    assert_eq!(rows[3].1, "user:nobody");
    assert_eq!(rows[3].2, "unknown user");
    for (action, subject, detail) in &rows {
        for secret in [PASSWORD, "not the password", token.as_str()] {
            assert!(
                !subject.contains(secret) && !detail.contains(secret),
                "{action}: {subject} {detail}"
            );
        }
    }
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn log_in_use_and_log_out_sqlite() {
    log_in_use_and_log_out(Backend::Sqlite).await;
}

#[tokio::test]
async fn log_in_use_and_log_out_postgres() {
    log_in_use_and_log_out(Backend::Postgres).await;
}

async fn expired_sessions_and_disabled_accounts(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    add_user(&app.db, "wang.fang", Role::Supervisor).await;
    let api = Api::of(&app);

    let token = api.token("wang.fang").await;
    assert_eq!(api.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
    // The shift is over.
    raw(&app.db, "UPDATE sessions SET expires_at = 1").await;
    let (status, body) = api.get("/api/v1/me", Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let token = api.token("wang.fang").await;
    assert_eq!(api.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
    app.db
        .set_user_disabled("wang.fang", true, "user:admin")
        .await
        .unwrap();
    assert_eq!(
        api.get("/api/v1/me", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED,
        "a disabled account's open session stops at once"
    );
    let (status, disabled) = api.login("wang.fang", PASSWORD).await;
    let (_, wrong) = api.login("wang.fang", "not the password").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        disabled, wrong,
        "a disabled account looks like a wrong password"
    );

    app.db
        .set_user_disabled("wang.fang", false, "user:admin")
        .await
        .unwrap();
    assert_eq!(api.get("/api/v1/me", Some(&token)).await.0, StatusCode::OK);
    let last = audit_rows(&app.db).await;
    assert!(
        last.iter()
            .any(|r| r.0 == "login_failed" && r.2 == "account disabled"),
        "{last:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn expired_sessions_and_disabled_accounts_sqlite() {
    expired_sessions_and_disabled_accounts(Backend::Sqlite).await;
}

#[tokio::test]
async fn expired_sessions_and_disabled_accounts_postgres() {
    expired_sessions_and_disabled_accounts(Backend::Postgres).await;
}

/// A session unused past its idle limit ends; one in use does not.
async fn unused_sessions_end(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = test_settings(backend, Broker::Embedded, dir.path());
    s.http.session_idle_secs = 2;
    let app = TestApp::spawn_with(s, Some(dir)).await;
    add_user(&app.db, "night.op", Role::Operator).await;
    let api = Api::of(&app);
    let used = api.token("night.op").await;
    let left = api.token("night.op").await;
    // Three seconds of use, a request every 0.4 s, on one session only.
    for _ in 0..8 {
        assert_eq!(api.get("/api/v1/me", Some(&used)).await.0, StatusCode::OK);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    assert_eq!(
        api.get("/api/v1/me", Some(&left)).await.0,
        StatusCode::UNAUTHORIZED,
        "left unused past its idle limit"
    );
    assert_eq!(api.get("/api/v1/me", Some(&used)).await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test]
async fn unused_sessions_end_sqlite() {
    unused_sessions_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn unused_sessions_end_postgres() {
    unused_sessions_end(Backend::Postgres).await;
}

async fn roles_and_error_bodies(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    for (name, role) in [
        ("op", Role::Operator),
        ("sup", Role::Supervisor),
        ("admin", Role::Admin),
    ] {
        add_user(&app.db, name, role).await;
    }
    let api = Api::of(&app);

    let (status, body) = api
        .get("/api/v1/audit/verify", Some(&api.token("op").await))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin"), "{body}");
    for who in ["admin", "sup"] {
        let (status, body) = api
            .get("/api/v1/audit/verify", Some(&api.token(who).await))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["ok"], true, "{body}");
        assert_eq!(body["broken"], Value::Null);
        // Three accounts added, three log-ins (this one's included).
        assert!(body["entries"].as_u64().unwrap() >= 5, "{body}");
    }
    assert_eq!(
        api.get("/api/v1/audit/verify", None).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Whatever a client sends, the answer is a 4xx with a JSON error.
    let session = api.url("/api/v1/session");
    let attempts = [
        api.http.post(&session).body("{not json"),
        api.http
            .post(&session)
            .header("content-type", "application/json")
            .body("{not json"),
        api.http.post(&session).json(&json!({ "username": "op" })),
        api.http
            .post(&session)
            .json(&json!({ "username": 7, "password": [] })),
        api.http
            .post(&session)
            .json(&json!({ "username": "x".repeat(10_000), "password": PASSWORD })),
        api.http
            .post(&session)
            .json(&json!({ "username": "op", "password": "p".repeat(100_000) })),
        api.http
            .post(&session)
            .json(&json!({ "username": "op\u{0}\n", "password": PASSWORD })),
        api.http.get(&session),
        api.http.put(api.url("/api/v1/me")),
        api.http.get(api.url("/api/v1/nothing-here")),
        api.http.get(api.url("/api/v1/me")).header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        ),
    ];
    for req in attempts {
        let r = req.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.expect("a JSON body");
        assert!(status.is_client_error(), "{status} {body}");
        assert!(body["error"].is_string(), "{status} {body}");
    }
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn roles_and_error_bodies_sqlite() {
    roles_and_error_bodies(Backend::Sqlite).await;
}

#[tokio::test]
async fn roles_and_error_bodies_postgres() {
    roles_and_error_bodies(Backend::Postgres).await;
}

/// A database of its own, without a server.
async fn test_db(backend: Backend) -> (Db, tempfile::TempDir, pingantong::Settings) {
    let dir = tempfile::tempdir().unwrap();
    let s = test_settings(backend, Broker::Embedded, dir.path());
    let db = Db::connect(&s.store_config(4).unwrap()).await.unwrap();
    (db, dir, s)
}

fn entry<'a>(action: &'a str, detail: &'a str) -> pingantong::store::AuditEntry<'a> {
    pingantong::store::AuditEntry {
        actor: "system",
        action,
        subject: "test",
        detail,
    }
}

async fn audit_chain(backend: Backend) {
    let (db, _dir, _) = test_db(backend).await;
    let empty = db.verify_audit_chain().await.unwrap();
    assert_eq!((empty.entries, empty.broken), (0, None));

    // More than one verification page.
    for i in 0..1_205 {
        db.audit(entry("step", &i.to_string())).await.unwrap();
    }
    let report = db.verify_audit_chain().await.unwrap();
    assert_eq!((report.entries, report.broken), (1_205, None));

    // Twenty writers at once still make one chain.
    let writers: Vec<_> = (0..20)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    db.audit(entry("concurrent", &format!("{w}/{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let report = db.verify_audit_chain().await.unwrap();
    assert_eq!((report.entries, report.broken), (1_405, None));

    // An edited row is found, and only that row is named.
    raw(
        &db,
        "UPDATE audit_log SET detail = 'nothing happened' WHERE id = 700",
    )
    .await;
    let report = db.verify_audit_chain().await.unwrap();
    let broken = report.broken.unwrap();
    assert_eq!((broken.id, broken.fault), (700, ChainFault::HashMismatch));
    assert_eq!(report.entries, 700);
    db.close().await;
}

#[tokio::test]
async fn audit_chain_sqlite() {
    audit_chain(Backend::Sqlite).await;
}

#[tokio::test]
async fn audit_chain_postgres() {
    audit_chain(Backend::Postgres).await;
}

/// Where `user add` finds the password.
enum Password<'a> {
    None,
    Stdin(&'a str),
    Env(&'a str),
}

/// `pingantong <args> --database-url … [--database-schema …]`: (exit code, stdout, stderr).
async fn cli(
    s: &pingantong::Settings,
    args: &[&str],
    password: Password<'_>,
) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pingantong"));
    cmd.args(args)
        .arg("--database-url")
        .arg(s.database_url())
        .env("RUST_LOG", "warn")
        .env_remove("PAT_NEW_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(schema) = &s.database.schema {
        cmd.arg("--database-schema").arg(schema);
    }
    // The test's own data directory, never one a local server left behind.
    if !args.contains(&"--data-dir") {
        cmd.arg("--data-dir").arg(&s.data_dir);
    }
    if let Password::Env(p) = password {
        cmd.env("PAT_NEW_PASSWORD", p);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Password::Stdin(text) = password {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finishes within 60 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn command_line(backend: Backend) {
    let (db, _dir, s) = test_db(backend).await;
    let (code, out, err) = cli(&s, &["audit", "verify"], Password::None).await;
    assert_eq!(
        (code, out.trim()),
        (0, "audit chain ok: 0 entries"),
        "{err}"
    );

    // The password on standard input (one line), or in the environment.
    let (code, out, err) = cli(
        &s,
        &["user", "add", "--username", "chen.jing", "--role", "admin"],
        Password::Stdin("a long enough password\n"),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let user = db.login_user("chen.jing").await.unwrap().unwrap();
    assert_eq!(user.role, Role::Admin);
    assert!(pingantong::api::auth::verify_password(
        "a long enough password",
        Some(&user.password_hash)
    ));
    let (code, _, err) = cli(
        &s,
        &[
            "user",
            "add",
            "--username",
            "chen.jing",
            "--role",
            "operator",
        ],
        Password::Env("another password"),
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("taken"), "{err}");
    let (code, _, err) = cli(
        &s,
        &["user", "add", "--username", "zhao", "--role", "carer"],
        Password::Stdin("a long enough password\n"),
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("carer"), "{err}");
    let (code, _, _) = cli(
        &s,
        &["user", "add", "--username", "zhao", "--role", "boss"],
        Password::Stdin("a long enough password\n"),
    )
    .await;
    assert_eq!(code, 2, "clap refuses an unknown role");
    let (code, out, err) = cli(
        &s,
        &[
            "user",
            "add",
            "--username",
            "zhou.min",
            "--role",
            "regulator",
        ],
        Password::Env("from the environment"),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let user = db.login_user("zhou.min").await.unwrap().unwrap();
    assert!(pingantong::api::auth::verify_password(
        "from the environment",
        Some(&user.password_hash)
    ));

    // Accounts listed, disabled, enabled and given a new password.
    let (code, out, err) = cli(&s, &["user", "list"], Password::None).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two accounts: {out}");
    assert!(
        lines[1].starts_with("chen.jing")
            && lines[1].contains("admin")
            && lines[1].contains("enabled"),
        "{out}"
    );
    assert!(
        !out.contains("argon2"),
        "no password hash is ever printed: {out}"
    );
    let (code, _, err) = cli(
        &s,
        &["user", "disable", "--username", "zhou.min"],
        Password::None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(db.login_user("zhou.min").await.unwrap().unwrap().disabled);
    let (code, out, _) = cli(&s, &["user", "list"], Password::None).await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("zhou.min") && l.contains("disabled")),
        "{out}"
    );
    let (code, _, err) = cli(
        &s,
        &["user", "enable", "--username", "zhou.min"],
        Password::None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!db.login_user("zhou.min").await.unwrap().unwrap().disabled);
    let (code, _, err) = cli(
        &s,
        &["user", "reset-password", "--username", "zhou.min"],
        Password::Stdin("a brand new password\n"),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let user = db.login_user("zhou.min").await.unwrap().unwrap();
    assert!(pingantong::api::auth::verify_password(
        "a brand new password",
        Some(&user.password_hash)
    ));
    assert!(!pingantong::api::auth::verify_password(
        "from the environment",
        Some(&user.password_hash)
    ));
    let (code, _, err) = cli(
        &s,
        &["user", "disable", "--username", "nobody"],
        Password::None,
    )
    .await;
    assert_eq!(code, 1, "an unknown account is an error");
    assert!(err.contains("nobody"), "{err}");

    for i in 0..3 {
        db.audit(entry("step", &i.to_string())).await.unwrap();
    }
    let (code, out, err) = cli(&s, &["audit", "verify"], Password::None).await;
    assert_eq!(
        (code, out.trim()),
        (0, "audit chain ok: 8 entries"),
        "{err}"
    );
    let rows = audit_rows(&db).await;
    assert_eq!(rows[0].0, "user_added");
    assert_eq!(rows[0].1, "user:chen.jing");
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        actions[2..5],
        ["user_disabled", "user_enabled", "password_reset"],
        "each account change audited: {rows:?}"
    );

    // A row taken out breaks the link of the next one.
    raw(&db, "DELETE FROM audit_log WHERE id = 6").await;
    let (code, out, _) = cli(&s, &["audit", "verify"], Password::None).await;
    assert_eq!(code, 1);
    assert_eq!(
        out.trim(),
        "audit chain broken at entry 7: prev_hash does not link to the previous entry"
    );
    db.close().await;
}

#[tokio::test]
async fn command_line_sqlite() {
    command_line(Backend::Sqlite).await;
}

#[tokio::test]
async fn command_line_postgres() {
    command_line(Backend::Postgres).await;
}

/// Admins manage accounts over the API: list, disable (the session stops at
/// once), enable, a new password (old sessions end); nobody else may, and
/// each change is in the audit chain with the admin's name.
async fn admins_manage_accounts(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    add_user(&app.db, "admin.he", Role::Admin).await;
    add_user(&app.db, "op.sun", Role::Operator).await;
    add_user(&app.db, "sup.ma", Role::Supervisor).await;
    let api = Api::of(&app);
    let admin = api.token("admin.he").await;
    let sup = api.token("sup.ma").await;
    let op = api.token("op.sun").await;

    let (status, users) = api.get("/api/v1/users", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK, "{users}");
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin.he", "op.sun", "sup.ma"]);
    let sun = &users.as_array().unwrap()[1];
    assert_eq!(
        (&sun["role"], &sun["disabled"], &sun["live_sessions"]),
        (&json!("operator"), &json!(false), &json!(1))
    );
    assert!(
        !users.to_string().contains("argon2"),
        "no password hash: {users}"
    );
    for (who, token) in [("supervisor", &sup), ("operator", &op)] {
        assert_eq!(
            api.get("/api/v1/users", Some(token)).await.0,
            StatusCode::FORBIDDEN,
            "{who}"
        );
        let (status, _) = api
            .post("/api/v1/users/op.sun/disable", token, json!({}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{who}");
    }

    let (status, body) = api
        .post("/api/v1/users/op.sun/disable", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        api.get("/api/v1/me", Some(&op)).await.0,
        StatusCode::UNAUTHORIZED,
        "stopped at once"
    );
    assert_eq!(
        api.login("op.sun", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = api
        .post("/api/v1/users/admin.he/disable", &admin, json!({}))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an admin does not lock themselves out"
    );
    let (status, _) = api
        .post("/api/v1/users/nobody/disable", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = api
        .post("/api/v1/users/op.sun/enable", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let op = api.token("op.sun").await;
    assert_eq!(api.get("/api/v1/me", Some(&op)).await.0, StatusCode::OK);

    let (status, body) = api
        .post(
            "/api/v1/users/op.sun/password",
            &admin,
            json!({"password": "short"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .post(
            "/api/v1/users/op.sun/password",
            &admin,
            json!({"password": "night shift 2026"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        api.get("/api/v1/me", Some(&op)).await.0,
        StatusCode::UNAUTHORIZED,
        "old sessions ended"
    );
    assert_eq!(
        api.login("op.sun", PASSWORD).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.login("op.sun", "night shift 2026").await.0,
        StatusCode::OK
    );

    let rows = audit_rows(&app.db).await;
    let changes: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| {
            matches!(
                r.0.as_str(),
                "user_disabled" | "user_enabled" | "password_reset"
            )
        })
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(
        changes,
        [
            ("user_disabled", "user:op.sun"),
            ("user_enabled", "user:op.sun"),
            ("password_reset", "user:op.sun")
        ]
    );
    assert!(
        !rows.iter().any(|r| r.2.contains("night shift")),
        "the password is never recorded"
    );
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn admins_manage_accounts_sqlite() {
    admins_manage_accounts(Backend::Sqlite).await;
}

#[tokio::test]
async fn admins_manage_accounts_postgres() {
    admins_manage_accounts(Backend::Postgres).await;
}

/// Five wrong passwords in a row lock the account — even the right password
/// is then refused (429, no password work) — until an admin unlocks it; each
/// lock and unlock is audited. Many failures from one address, across names
/// no account lock sees, close the address.
async fn failed_log_ins_lock_the_account_and_the_address(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    add_user(&app.db, "admin.he", Role::Admin).await;
    add_user(&app.db, "op.sun", Role::Operator).await;
    let api = Api::of(&app);
    let admin = api.token("admin.he").await;

    for i in 0..4 {
        let (status, _) = api.login("op.sun", "not the password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // A good log-in clears the count: four more failures do not lock.
    assert_eq!(api.login("op.sun", PASSWORD).await.0, StatusCode::OK);
    for _ in 0..4 {
        api.login("op.sun", "not the password").await;
    }
    assert_eq!(api.login("op.sun", PASSWORD).await.0, StatusCode::OK);
    for _ in 0..5 {
        api.login("op.sun", "not the password").await;
    }
    let (status, body) = api.login("op.sun", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"].as_str().unwrap().contains("unlock"), "{body}");
    let (_, users) = api.get("/api/v1/users", Some(&admin)).await;
    let sun = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "op.sun")
        .unwrap();
    assert!(
        sun["locked_until"].as_i64().unwrap() > now_ms() as i64,
        "{sun}"
    );

    let (status, _) = api
        .post("/api/v1/users/op.sun/unlock", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(api.login("op.sun", PASSWORD).await.0, StatusCode::OK);
    let rows = audit_rows(&app.db).await;
    let locks: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| matches!(r.0.as_str(), "login_locked" | "user_unlocked"))
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(
        locks,
        [
            ("login_locked", "user:op.sun"),
            ("user_unlocked", "user:op.sun")
        ]
    );

    // Guessing across names from one address: 20 failures within the window
    // (13 above, 7 more) close it, for every name, the right password included.
    for i in 0..7 {
        let (status, _) = api.login(&format!("guess.{i}"), "not the password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let (status, body) = api.login("op.sun", PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        audit_rows(&app.db)
            .await
            .iter()
            .any(|r| r.0 == "address_locked")
    );
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());
    app.stop().await;
}

#[tokio::test]
async fn failed_log_ins_lock_the_account_and_the_address_sqlite() {
    failed_log_ins_lock_the_account_and_the_address(Backend::Sqlite).await;
}

#[tokio::test]
async fn failed_log_ins_lock_the_account_and_the_address_postgres() {
    failed_log_ins_lock_the_account_and_the_address(Backend::Postgres).await;
}

/// Removing the newest audit entries leaves a chain that verifies on its own;
/// the head the server wrote beside its data (signed with `audit_key`) is
/// what finds it. A head signed with another key is not trusted.
async fn the_audit_head_outside_the_database_finds_removed_newest_entries(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(backend, Broker::Embedded, dir.path());
    settings.keys.audit_key = Some(pingantong::config::Secret::new("a key kept apart"));
    let app = TestApp::spawn_with(settings.clone(), None).await;
    add_user(&app.db, "li.wei", Role::Operator).await;
    let api = Api::of(&app);
    for _ in 0..3 {
        api.token("li.wei").await;
    }
    app.stop().await;
    let head = dir.path().join("audit-head.json");
    let cp: Value = serde_json::from_str(&std::fs::read_to_string(&head).unwrap()).unwrap();
    assert!(cp["signature"].is_string(), "{cp}");
    assert!(
        !cp.to_string().contains("a key kept apart"),
        "the key is never written"
    );

    let verify = |key: &'static str| {
        let (s, path) = (settings.clone(), dir.path().to_str().unwrap().to_owned());
        async move {
            cli(
                &s,
                &["audit", "verify", "--data-dir", &path, "--audit-key", key],
                Password::None,
            )
            .await
        }
    };
    let (code, out, err) = verify("a key kept apart").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("holds (signature verified)"), "{out}");
    let (code, out, _) = verify("another key").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not signed with this audit_key"), "{out}");

    // The newest two entries removed: the chain alone still verifies…
    let db = Db::connect(&settings.store_config(2).unwrap())
        .await
        .unwrap();
    let newest = cp["head_id"].as_i64().unwrap();
    let delete = format!("DELETE FROM audit_log WHERE id >= {}", newest - 1);
    match &db {
        Db::Sqlite { write, .. } => {
            sqlx::query(sqlx::AssertSqlSafe(delete))
                .execute(write)
                .await
                .unwrap();
        }
        Db::Postgres(p, _) => {
            sqlx::query(sqlx::AssertSqlSafe(delete))
                .execute(p)
                .await
                .unwrap();
        }
    }
    assert!(db.verify_audit_chain().await.unwrap().is_ok());
    db.close().await;
    // …the head does not.
    let (code, out, _) = verify("a key kept apart").await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("entry {newest}")) && out.contains("newest entries removed"),
        "{out}"
    );
}

#[tokio::test]
async fn the_audit_head_outside_the_database_finds_removed_newest_entries_sqlite() {
    the_audit_head_outside_the_database_finds_removed_newest_entries(Backend::Sqlite).await;
}

#[tokio::test]
async fn the_audit_head_outside_the_database_finds_removed_newest_entries_postgres() {
    the_audit_head_outside_the_database_finds_removed_newest_entries(Backend::Postgres).await;
}

/// Every step on the timelines, whoever wrote it (the stage, timers, carers,
/// operators), is sealed into the audit chain; a step edited or removed after
/// its seal breaks the chain there.
async fn timeline_steps_are_sealed(backend: Backend) {
    let app = TestApp::spawn(backend, Broker::Embedded).await;
    let city = seed_small_city(&app.db).await;
    let mut device = Device::connect(app.native).await;
    device
        .send(
            &event(&city.device, 1, pingantong_protocol::EventKind::Sos),
            &city.secret,
        )
        .await;
    let incident = newest_incident(&app.db).await;
    add_user(&app.db, "seal.op", Role::Operator).await;
    let api = Api::of(&app);
    let token = api.token("seal.op").await;
    let (status, _) = api
        .post(
            &format!("/api/v1/incidents/{incident}/claim"),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let steps = eventually("the steps written", || async {
        let t = app.db.timeline(incident).await.unwrap();
        (t.len() >= 2).then_some(t.len())
    })
    .await;
    // (The server seals every few seconds too: whichever ran, all are sealed once.)
    app.db.seal_timeline(now_ms() + 1).await.unwrap();
    assert_eq!(
        app.db.seal_timeline(now_ms() + 1).await.unwrap(),
        0,
        "sealed once"
    );
    let seals: Vec<(i64, usize)> = app
        .db
        .audit_trail(Some("timeline"), 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "timeline_sealed" && e.actor == "system")
        .map(|e| (e.id, e.detail.split(' ').next().unwrap().parse().unwrap()))
        .collect();
    let covered: usize = seals.iter().map(|s| s.1).sum();
    assert!(covered >= steps, "{covered} sealed of {steps}: {seals:?}");
    assert!(app.db.verify_audit_chain().await.unwrap().is_ok());

    // A step rewritten after its seal; then put back as it was.
    let first = app.db.timeline(incident).await.unwrap().remove(0);
    raw(
        &app.db,
        "UPDATE incident_events SET detail = 'nothing happened' \
         WHERE id = (SELECT MIN(id) FROM incident_events)",
    )
    .await;
    let broken = app.db.verify_audit_chain().await.unwrap().broken.unwrap();
    assert_eq!(broken.fault, ChainFault::TimelineAltered);
    assert!(
        seals.iter().any(|s| s.0 == broken.id),
        "{broken:?} {seals:?}"
    );
    let restore = format!(
        "UPDATE incident_events SET detail = '{}' WHERE id = {}",
        first.detail.replace('\'', "''"),
        first.id
    );
    raw(&app.db, Box::leak(restore.into_boxed_str())).await;
    assert!(
        app.db.verify_audit_chain().await.unwrap().is_ok(),
        "put back"
    );
    // A step removed after its seal.
    raw(
        &app.db,
        "DELETE FROM incident_events WHERE id = (SELECT MAX(id) FROM incident_events \
         WHERE sealed_by IS NOT NULL)",
    )
    .await;
    let broken = app.db.verify_audit_chain().await.unwrap().broken.unwrap();
    assert_eq!(broken.fault, ChainFault::TimelineAltered);
    assert!(
        seals.iter().any(|s| s.0 == broken.id),
        "{broken:?} {seals:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn timeline_steps_are_sealed_sqlite() {
    timeline_steps_are_sealed(Backend::Sqlite).await;
}

#[tokio::test]
async fn timeline_steps_are_sealed_postgres() {
    timeline_steps_are_sealed(Backend::Postgres).await;
}

/// `pingantong data-key list|rotate|rewrap` as README's "Encryption at rest" tells an admin to run them.
#[tokio::test]
async fn data_keys_from_the_command_line() {
    let (db, _dir, s) = test_db(Backend::Sqlite).await;
    let city = seed_small_city(&db).await;
    db.close().await;

    let (code, out, err) = cli(&s, &["data-key", "list"], Password::None).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "one data key after the first start: {out}");
    assert!(rows[0].trim_start().starts_with("1 "), "{out}");

    let (code, out, err) = cli(&s, &["data-key", "rotate", "--offline"], Password::None).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("data key 2 is current;") && out.contains("keys [1] deleted"),
        "{out}"
    );
    let (_, out, _) = cli(&s, &["data-key", "list"], Password::None).await;
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].trim_start().starts_with("2 ") && rows[0].trim_end().ends_with("yes"),
        "{out}"
    );

    // A new master key on standard input: the store opens with it, and not
    // with the old one.
    let new_key = "c".repeat(64);
    let (code, out, err) = cli(&s, &["data-key", "rewrap"], Password::Stdin(&new_key)).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("1 data keys now wrapped by master key "),
        "{out}"
    );
    assert!(
        !out.contains(&new_key) && !err.contains(&new_key),
        "never printed"
    );
    let (code, _, err) = cli(&s, &["data-key", "list"], Password::None).await;
    assert_ne!(code, 0, "the old master key no longer opens the store");
    assert!(err.contains("does not open"), "{err}");
    let mut with_new = s.clone();
    with_new.keys.data_key = Some(pingantong::config::Secret::new(new_key.clone()));
    let db = Db::connect(&with_new.store_config(2).unwrap())
        .await
        .unwrap();
    let p = db.client_profile(city.client_id).await.unwrap().unwrap();
    assert_eq!(p.medical_notes, "高血压；房颤");
    // Both are in the audit log, and the chain holds.
    let actions: Vec<String> = audit_rows(&db).await.into_iter().map(|r| r.0).collect();
    assert!(
        actions.contains(&"data_key_rotated".to_owned())
            && actions.contains(&"data_keys_rewrapped".to_owned()),
        "{actions:?}"
    );
    assert!(db.verify_audit_chain().await.unwrap().is_ok());
    db.close().await;
}
