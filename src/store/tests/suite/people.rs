//! people: console accounts, log-ins and sessions; the MQTT credentials of
//! devices, carers and servers, and what a broker sync is told of them.

use pingantong_domain::Role;
use pingantong_domain::acl::Principal;
use pingantong_protocol::DeviceId;
use pingantong_store::{CredentialError, CredentialRow, Db, LoginUser, NewUser, UserError, now_ms};

#[allow(unused_imports)]
use crate::both_backends;
use crate::registry::{a_carer, a_client, a_device, a_provider, audit_len, audit_of};

/// An account of `role`, tied to nobody.
fn user(username: &str, role: Role) -> NewUser<'_> {
    NewUser {
        username,
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        role,
        carer_id: None,
        provider_id: None,
    }
}

async fn login(db: &Db, username: &str) -> LoginUser {
    db.login_user(username).await.unwrap().expect("the account")
}

fn device(id: &str) -> Principal {
    Principal::Device(DeviceId::parse(id).unwrap())
}

fn row(username: &str, generation: i64, revoked: bool) -> CredentialRow {
    CredentialRow {
        username: username.into(),
        generation,
        revoked,
    }
}

both_backends!(
    accounts_are_added_checked_and_listed,
    failed_logins_lock_and_admins_unlock_disable_and_enable,
    sessions_open_are_used_and_end,
    mqtt_credentials_are_issued_rotated_and_revoked,
    device_credentials_are_issued_in_bulk_all_or_nothing,
    a_broker_sync_learns_each_change_once,
);

async fn accounts_are_added_checked_and_listed(db: &Db) {
    let provider = a_provider(db, "越秀区颐康中心").await;
    let other = a_provider(db, "应急援助队").await;
    let carer = a_carer(db, provider).await;

    let id = db
        .add_user(&user("li.wei", Role::Operator), "cli:root")
        .await
        .unwrap();
    let li = login(db, "li.wei").await;
    assert_eq!(
        (
            li.id,
            li.username.as_str(),
            li.role,
            li.disabled,
            li.failed_logins,
            li.locked_until
        ),
        (id, "li.wei", Role::Operator, false, 0, None)
    );
    assert_eq!(li.password_hash, user("x", Role::Admin).password_hash);
    // A carer's account: the provider is the carer's.
    let carer_id = db
        .add_user(
            &NewUser {
                carer_id: Some(carer),
                ..user("wang.fang", Role::Carer)
            },
            "user:admin",
        )
        .await
        .unwrap();
    let entries = audit_len(db).await;

    // Refused, nothing written.
    let refused = [
        (user("li wei", Role::Operator), "BadUsername"),
        (user("", Role::Operator), "BadUsername"),
        (user("zhao", Role::Carer), "CarerIdMissing"),
        (
            NewUser {
                carer_id: Some(carer),
                ..user("zhao", Role::Operator)
            },
            "CarerIdNotCarer",
        ),
        (
            NewUser {
                carer_id: Some(carer + 100),
                ..user("zhao", Role::Carer)
            },
            "UnknownCarer",
        ),
        (
            NewUser {
                provider_id: Some(other + 100),
                ..user("zhao", Role::Regulator)
            },
            "UnknownProvider",
        ),
        (
            NewUser {
                carer_id: Some(carer),
                provider_id: Some(other),
                ..user("zhao", Role::Carer)
            },
            "ProviderMismatch",
        ),
        (user("li.wei", Role::Admin), "Taken"),
    ];
    for (u, want) in refused {
        let err = db.add_user(&u, "user:admin").await.unwrap_err();
        let ok = match (&err, want) {
            (UserError::BadUsername, "BadUsername")
            | (UserError::CarerIdMissing, "CarerIdMissing")
            | (UserError::CarerIdNotCarer, "CarerIdNotCarer") => true,
            (UserError::UnknownCarer(c), "UnknownCarer") => *c == carer + 100,
            (UserError::UnknownProvider(p), "UnknownProvider") => *p == other + 100,
            (
                UserError::ProviderMismatch {
                    carer: c,
                    actual,
                    given,
                },
                "ProviderMismatch",
            ) => (*c, *actual, *given) == (carer, provider, other),
            (UserError::Taken(name), "Taken") => name == "li.wei",
            _ => false,
        };
        assert!(ok, "{:?}: {err:?}, not {want}", u.username);
    }
    assert_eq!(audit_len(db).await, entries);
    assert_eq!(login(db, "li.wei").await.role, Role::Operator);
    assert!(db.login_user("zhao").await.unwrap().is_none());

    // A regulator of a provider; the list, by name, with what an admin needs.
    db.add_user(
        &NewUser {
            provider_id: Some(other),
            ..user("auditor@yuexiu", Role::Regulator)
        },
        "user:admin",
    )
    .await
    .unwrap();
    let listed: Vec<_> = db
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| {
            (
                u.username,
                u.role,
                u.carer_id,
                u.provider_id,
                u.disabled,
                u.locked_until,
                u.live_sessions,
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                "auditor@yuexiu".to_owned(),
                Role::Regulator,
                None,
                Some(other),
                false,
                None,
                0
            ),
            (
                "li.wei".to_owned(),
                Role::Operator,
                None,
                None,
                false,
                None,
                0
            ),
            (
                "wang.fang".to_owned(),
                Role::Carer,
                Some(carer),
                Some(provider),
                false,
                None,
                0
            ),
        ]
    );
    let added = audit_of(db, "user:wang.fang").await;
    assert_eq!(
        (
            added[0].actor.as_str(),
            added[0].action.as_str(),
            added[0].detail.clone()
        ),
        (
            "user:admin",
            "user_added",
            format!("role carer, carer {carer}, provider {provider}")
        )
    );
    assert_eq!(login(db, "wang.fang").await.id, carer_id);
}

async fn failed_logins_lock_and_admins_unlock_disable_and_enable(db: &Db) {
    let id = db
        .add_user(&user("li.wei", Role::Operator), "cli:root")
        .await
        .unwrap();
    let until = now_ms() + 3_600_000;
    assert!(!db.note_failed_login(id, "li.wei", 3, until).await.unwrap());
    assert!(!db.note_failed_login(id, "li.wei", 3, until).await.unwrap());
    assert_eq!(login(db, "li.wei").await.failed_logins, 2);
    // A good log-in: the count starts again.
    db.clear_failed_logins(id).await.unwrap();
    assert_eq!(login(db, "li.wei").await.failed_logins, 0);
    for n in 1..=3 {
        let locked = db.note_failed_login(id, "li.wei", 3, until).await.unwrap();
        assert_eq!(locked, n == 3, "failure {n}");
    }
    let li = login(db, "li.wei").await;
    assert_eq!((li.failed_logins, li.locked_until), (0, Some(until)));
    assert_eq!(db.list_users().await.unwrap()[0].locked_until, Some(until));
    let last = audit_of(db, "user:li.wei").await.pop().unwrap();
    assert_eq!(
        (
            last.actor.as_str(),
            last.action.as_str(),
            last.detail.clone()
        ),
        (
            "system",
            "login_locked",
            format!("3 failed log-ins in a row; locked until {until}")
        )
    );

    // An admin lifts the lock before its time.
    db.unlock_user("li.wei", "user:admin").await.unwrap();
    let li = login(db, "li.wei").await;
    assert_eq!((li.failed_logins, li.locked_until), (0, None));
    assert_eq!(
        audit_of(db, "user:li.wei").await.pop().unwrap().action,
        "user_unlocked"
    );
    // A lock past its time is not listed as one.
    db.note_failed_login(id, "li.wei", 1, 1_000).await.unwrap();
    assert_eq!(login(db, "li.wei").await.locked_until, Some(1_000));
    assert_eq!(db.list_users().await.unwrap()[0].locked_until, None);

    // Disabled and enabled again, each audited.
    db.set_user_disabled("li.wei", true, "user:admin")
        .await
        .unwrap();
    assert!(login(db, "li.wei").await.disabled);
    assert!(db.list_users().await.unwrap()[0].disabled);
    db.set_user_disabled("li.wei", false, "user:admin")
        .await
        .unwrap();
    assert!(!login(db, "li.wei").await.disabled);
    let actions: Vec<_> = audit_of(db, "user:li.wei")
        .await
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        vec![
            "user_added",
            "login_locked",
            "user_unlocked",
            "login_locked",
            "user_disabled",
            "user_enabled"
        ]
    );

    // Nobody of that name: refused, nothing written.
    let entries = audit_len(db).await;
    assert!(matches!(
        db.unlock_user("zhao", "user:admin").await,
        Err(UserError::NotFound(n)) if n == "zhao"
    ));
    assert!(matches!(
        db.set_user_disabled("zhao", true, "user:admin").await,
        Err(UserError::NotFound(_))
    ));
    assert_eq!(audit_len(db).await, entries);
}

async fn sessions_open_are_used_and_end(db: &Db) {
    db.add_user(&user("li.wei", Role::Supervisor), "cli:root")
        .await
        .unwrap();
    let li = login(db, "li.wei").await;
    let opened = now_ms();
    let expires = opened + 8 * 3_600_000;
    let idle = 15 * 60_000;
    let (h1, h2, h3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    db.open_session(&h1, &li, expires, idle).await.unwrap();
    let s = db.session_user(&h1).await.unwrap().unwrap();
    assert_eq!(
        (
            s.user_id,
            s.username.as_str(),
            s.role,
            s.carer_id,
            s.disabled,
            s.expires_at,
            s.revoked_at,
            s.idle_ms
        ),
        (
            li.id,
            "li.wei",
            Role::Supervisor,
            None,
            false,
            expires,
            None,
            Some(idle)
        )
    );
    assert!(s.last_seen_at >= opened && s.last_seen_at <= now_ms());
    assert!(s.is_live(s.last_seen_at + 1));
    assert!(!s.is_live(s.last_seen_at + idle), "idle for its limit");
    let first_login = audit_of(db, "user:li.wei").await.pop().unwrap();
    assert_eq!(
        (first_login.actor.as_str(), first_login.action.as_str()),
        ("user:li.wei", "login")
    );
    assert_eq!(
        first_login.detail,
        format!("session 01010101, role supervisor, expires at {expires}")
    );
    assert!(db.session_user(&[9u8; 32]).await.unwrap().is_none());

    // Used later: it does not idle out meanwhile.
    let used = s.last_seen_at + 10 * 60_000;
    db.touch_session(&h1, used).await.unwrap();
    let s = db.session_user(&h1).await.unwrap().unwrap();
    assert_eq!(s.last_seen_at, used);
    assert!(s.is_live(used + idle - 1));

    db.open_session(&h2, &li, expires, idle).await.unwrap();
    // One already expired does not count as live.
    db.open_session(&[4u8; 32], &li, opened - 1, idle)
        .await
        .unwrap();
    assert_eq!(db.list_users().await.unwrap()[0].live_sessions, 2);

    // Logged out: once; a touch does not bring it back.
    assert!(db.revoke_session(&h1, "li.wei").await.unwrap());
    let entries = audit_len(db).await;
    assert!(!db.revoke_session(&h1, "li.wei").await.unwrap());
    assert_eq!(audit_len(db).await, entries, "nothing to record");
    db.touch_session(&h1, used + 1).await.unwrap();
    let s = db.session_user(&h1).await.unwrap().unwrap();
    assert_eq!(s.last_seen_at, used);
    assert!(s.revoked_at.is_some() && !s.is_live(used + 1));
    assert_eq!(db.list_users().await.unwrap()[0].live_sessions, 1);
    let out = audit_of(db, "user:li.wei").await.pop().unwrap();
    assert_eq!(
        (out.action.as_str(), out.detail.as_str()),
        ("logout", "session 01010101")
    );

    // A new password ends the sessions left.
    db.reset_password("li.wei", "$argon2id$new", "user:admin")
        .await
        .unwrap();
    assert_eq!(login(db, "li.wei").await.password_hash, "$argon2id$new");
    assert!(
        db.session_user(&h2)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some()
    );
    assert_eq!(db.list_users().await.unwrap()[0].live_sessions, 0);
    let reset = audit_of(db, "user:li.wei").await.pop().unwrap();
    assert_eq!(
        (
            reset.actor.as_str(),
            reset.action.as_str(),
            reset.detail.as_str()
        ),
        ("user:admin", "password_reset", "2 open session(s) ended")
    );
    let entries = audit_len(db).await;
    assert!(matches!(
        db.reset_password("zhao", "$argon2id$x", "user:admin").await,
        Err(UserError::NotFound(_))
    ));
    assert_eq!(audit_len(db).await, entries);

    // A disabled account's session stops working at once.
    db.open_session(&h3, &login(db, "li.wei").await, expires, idle)
        .await
        .unwrap();
    let now = now_ms();
    assert!(db.session_user(&h3).await.unwrap().unwrap().is_live(now));
    db.set_user_disabled("li.wei", true, "user:admin")
        .await
        .unwrap();
    let s = db.session_user(&h3).await.unwrap().unwrap();
    assert!(s.disabled && !s.is_live(now));
}

async fn mqtt_credentials_are_issued_rotated_and_revoked(db: &Db) {
    let client = a_client(db, "陈秀英").await;
    a_device(db, "PT-1", Some(client)).await;
    let carer = a_carer(db, a_provider(db, "越秀区颐康中心").await).await;
    let pt1 = device("PT-1");
    assert_eq!(db.mqtt_credential(&pt1).await.unwrap(), None);

    assert_eq!(db.issue_mqtt_credential(&pt1, "cli:root").await.unwrap(), 1);
    assert_eq!(db.issue_mqtt_credential(&pt1, "cli:root").await.unwrap(), 2);
    assert_eq!(db.mqtt_credential(&pt1).await.unwrap(), Some(2));
    let issued = audit_of(db, "mqtt:devices/PT-1").await;
    assert_eq!(
        issued
            .iter()
            .map(|e| (e.action.as_str(), e.detail.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("mqtt_credential_issued", "generation 1"),
            ("mqtt_credential_issued", "generation 2")
        ]
    );
    assert_eq!(
        db.issue_mqtt_credential(&Principal::Carer(carer), "cli:root")
            .await
            .unwrap(),
        1
    );
    let server = Principal::Server("pingantong-1".into());
    assert_eq!(
        db.issue_mqtt_credential(&server, "cli:root").await.unwrap(),
        1
    );
    assert_eq!(db.mqtt_credential(&server).await.unwrap(), Some(1));

    // Nobody the registry knows: refused, nothing written.
    let entries = audit_len(db).await;
    let no_carer = format!("carers/{}", carer + 100);
    for (who, name) in [
        (device("PT-404"), "devices/PT-404"),
        (Principal::Carer(carer + 100), no_carer.as_str()),
        (
            Principal::Quarantine(DeviceId::parse("PT-1").unwrap()),
            "a quarantined client",
        ),
    ] {
        match db.issue_mqtt_credential(&who, "cli:root").await {
            Err(CredentialError::NotRegistered(n)) => assert_eq!(n, name),
            other => panic!("{who:?}: {other:?}"),
        }
    }
    assert_eq!(db.mqtt_credential(&device("PT-404")).await.unwrap(), None);
    assert_eq!(
        db.mqtt_credential(&Principal::Quarantine(DeviceId::parse("PT-1").unwrap()))
            .await
            .unwrap(),
        None
    );
    assert_eq!(audit_len(db).await, entries);
    let carers = format!("carers/{carer}");
    assert_eq!(
        db.mqtt_credentials().await.unwrap(),
        vec![
            row(&carers, 1, false),
            row("devices/PT-1", 2, false),
            row("servers/pingantong-1", 1, false)
        ]
    );

    // Revoked: it no longer connects, the list keeps it (a sync removes it),
    // and revoking it again finds nothing to revoke.
    db.revoke_mqtt_credential("devices/PT-1", "user:admin")
        .await
        .unwrap();
    assert_eq!(db.mqtt_credential(&pt1).await.unwrap(), None);
    assert_eq!(
        db.mqtt_credentials().await.unwrap()[1],
        row("devices/PT-1", 2, true)
    );
    let entries = audit_len(db).await;
    for name in ["devices/PT-1", "devices/PT-404"] {
        assert!(matches!(
            db.revoke_mqtt_credential(name, "user:admin").await,
            Err(CredentialError::NotFound(n)) if n == name
        ));
    }
    assert_eq!(audit_len(db).await, entries);
    assert_eq!(
        audit_of(db, "mqtt:devices/PT-1")
            .await
            .pop()
            .unwrap()
            .action,
        "mqtt_credential_revoked"
    );
    // Issued again: the next generation, live.
    assert_eq!(db.issue_mqtt_credential(&pt1, "cli:root").await.unwrap(), 3);
    assert_eq!(db.mqtt_credential(&pt1).await.unwrap(), Some(3));

    // A retired device is out with its credential, and gets no new one.
    assert!(db.retire_device("PT-1", "user:admin").await.unwrap());
    assert_eq!(db.mqtt_credential(&pt1).await.unwrap(), None);
    assert!(matches!(
        db.issue_mqtt_credential(&pt1, "cli:root").await,
        Err(CredentialError::NotRegistered(_))
    ));
    assert_eq!(
        db.mqtt_credentials().await.unwrap()[1],
        row("devices/PT-1", 3, false)
    );
}

async fn device_credentials_are_issued_in_bulk_all_or_nothing(db: &Db) {
    for id in ["PT-1", "PT-2", "PT-3", "PT-4"] {
        a_device(db, id, None).await;
    }
    assert!(db.retire_device("PT-4", "user:admin").await.unwrap());
    db.issue_mqtt_credential(&device("PT-1"), "cli:root")
        .await
        .unwrap();
    let entries = audit_len(db).await;
    let issued = db
        .issue_device_credentials(&["PT-1".to_owned(), "PT-2".to_owned()], "cli:root")
        .await
        .unwrap();
    assert_eq!(issued, vec![("PT-1".to_owned(), 2), ("PT-2".to_owned(), 1)]);
    assert_eq!(audit_len(db).await, entries + 1, "one entry for the lot");
    let last = audit_of(db, "mqtt:devices").await.pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.detail.as_str()),
        ("mqtt_credentials_issued", "2 devices")
    );
    assert_eq!(db.mqtt_credential(&device("PT-2")).await.unwrap(), Some(1));

    // One not in the registry (or retired): none of the batch is issued.
    for stranger in ["PT-404", "PT-4"] {
        match db
            .issue_device_credentials(
                &["PT-3".to_owned(), stranger.to_owned(), "PT-1".to_owned()],
                "cli:root",
            )
            .await
        {
            Err(CredentialError::NotRegistered(n)) => assert_eq!(n, format!("devices/{stranger}")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(db.mqtt_credential(&device("PT-3")).await.unwrap(), None);
    assert_eq!(db.mqtt_credential(&device("PT-1")).await.unwrap(), Some(2));
    assert_eq!(db.mqtt_credentials().await.unwrap().len(), 2);
    assert_eq!(audit_len(db).await, entries + 1);
    // Nothing asked, nothing done.
    assert!(
        db.issue_device_credentials(&[], "cli:root")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(audit_len(db).await, entries + 1);
}

async fn a_broker_sync_learns_each_change_once(db: &Db) {
    a_device(db, "PT-1", None).await;
    let server = Principal::Server("pingantong-1".into());
    let mark = now_ms() - 1;
    assert!(
        db.mqtt_credentials_changed_since(mark)
            .await
            .unwrap()
            .is_empty()
    );
    db.issue_mqtt_credential(&device("PT-1"), "cli:root")
        .await
        .unwrap();
    db.issue_mqtt_credential(&server, "cli:root").await.unwrap();

    let unsynced = db.mqtt_credentials_unsynced().await.unwrap();
    assert_eq!(
        unsynced,
        vec![
            row("devices/PT-1", 1, false),
            row("servers/pingantong-1", 1, false)
        ]
    );
    for r in &unsynced {
        db.mark_mqtt_credential_synced(r).await.unwrap();
    }
    assert!(db.mqtt_credentials_unsynced().await.unwrap().is_empty());

    // A rotation and a revocation are owed to the broker; telling it of a
    // state already past does not settle them.
    db.issue_mqtt_credential(&device("PT-1"), "cli:root")
        .await
        .unwrap();
    db.revoke_mqtt_credential("servers/pingantong-1", "cli:root")
        .await
        .unwrap();
    let owed = db.mqtt_credentials_unsynced().await.unwrap();
    assert_eq!(
        owed,
        vec![
            row("devices/PT-1", 2, false),
            row("servers/pingantong-1", 1, true)
        ]
    );
    db.mark_mqtt_credential_synced(&unsynced[0]).await.unwrap();
    assert_eq!(db.mqtt_credentials_unsynced().await.unwrap(), owed);
    db.mark_mqtt_credential_synced(&owed[0]).await.unwrap();
    assert_eq!(
        db.mqtt_credentials_unsynced().await.unwrap(),
        vec![owed[1].clone()]
    );
    db.mark_mqtt_credential_synced(&owed[1]).await.unwrap();
    assert!(db.mqtt_credentials_unsynced().await.unwrap().is_empty());

    // A broker that lost its store is told everything again.
    assert_eq!(db.forget_mqtt_credential_sync().await.unwrap(), 2);
    assert_eq!(db.mqtt_credentials_unsynced().await.unwrap(), owed);

    // What changed after `mark`.
    let mut changed = db.mqtt_credentials_changed_since(mark).await.unwrap();
    changed.sort();
    assert_eq!(
        changed.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        vec!["devices/PT-1", "servers/pingantong-1"]
    );
    // Only what changed after the time given.
    let latest = changed.iter().map(|c| c.1).max().unwrap();
    assert!(
        db.mqtt_credentials_changed_since(latest)
            .await
            .unwrap()
            .is_empty()
    );
    let last: Vec<_> = db.mqtt_credentials_changed_since(latest - 1).await.unwrap();
    assert!(
        !last.is_empty() && last.iter().all(|c| c.1 == latest),
        "{last:?}"
    );
}
