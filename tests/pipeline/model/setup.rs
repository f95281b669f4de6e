//! A case's world: a server on a fresh database with two residents, three
//! carers and two operators logged in, the carers' phones listening; and its
//! end, which stops the server and drops the PostgreSQL schema.

use super::*;

pub(super) async fn add_account(db: &Db, username: &str, role: Role, carer_id: Option<i64>) {
    let hash = hash_password(PASSWORD).unwrap();
    db.add_user(
        &NewUser {
            username,
            password_hash: &hash,
            role,
            carer_id,
            provider_id: None,
        },
        "test",
    )
    .await
    .unwrap();
}

pub(super) fn start(backend: Backend) -> Sut {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = {
        let mut s = test_settings(backend, Broker::Mosquitto, dir.path());
        s.stages.recovery_sweep_ms = SWEEP_MS;
        s
    };
    let clock = ManualClock::starting_now();
    let (app, residents, carers, operators, phones) = rt.block_on(async {
        let app = TestApp::spawn_with_clock(settings.clone(), None, &clock).await;
        let city = seed_small_city(&app.db).await;
        let mut residents = vec![Resident {
            client_id: city.client_id,
            device: city.device.clone(),
            secret: city.secret.clone(),
            seq: 0,
        }];
        // A neighbour on the same street, served by the same carers.
        let client_id = app
            .db
            .insert_client(&NewClient {
                name: "李伯".into(),
                address: "广州市越秀区北京街 14号 102室".into(),
                district: "越秀区".into(),
                street: "北京街".into(),
                lat: Some(23.1293),
                lon: Some(113.2646),
                language: "yue".into(),
                medical_notes: String::new(),
                medications: String::new(),
                allergies: String::new(),
                key_safe: String::new(),
                birth_year: Some(1941),
                subsidy_category: None,
            })
            .await
            .unwrap();
        let device = unique("PT").replace('_', "-");
        app.db
            .upsert_device(&NewDevice {
                id: device.clone(),
                protocol: "native".into(),
                secret: city.secret.clone(),
                client_id: Some(client_id),
            })
            .await
            .unwrap();
        residents.push(Resident {
            client_id,
            device,
            secret: city.secret.clone(),
            seq: 0,
        });
        let api = Api::of(&app);
        let mut carers = Vec::new();
        for (n, id) in [city.near_carer, city.far_carer, city.other_provider_carer]
            .into_iter()
            .enumerate()
        {
            let name = format!("carer.{n}");
            add_account(&app.db, &name, Role::Carer, Some(id)).await;
            carers.push((id, api.token(&name).await));
        }
        let mut operators = Vec::new();
        for name in OPERATORS {
            add_account(&app.db, name, Role::Operator, None).await;
            operators.push(api.token(name).await);
        }
        // Every carer's phone: offers and withdrawals (a persistent session
        // on the shared broker, so nothing is missed across restarts).
        let (host, port) = broker_of(&app);
        let topic = format!("{}/v1/carers/+/dispatch", settings.mqtt.topic_prefix);
        let phones = MqttProbe::connect(&host, port, &[topic]).await;
        (app, residents, carers, operators, phones)
    });
    let skip = std::env::var("PAT_MODEL_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    Sut {
        api: Some(Api::of(&app)),
        phones: Some(phones),
        app: Some(app),
        rt: Some(std::sync::Arc::new(rt)),
        settings,
        clock,
        residents,
        carers,
        operators,
        model: Model::default(),
        trace: Vec::new(),
        steps: 0,
        excused: false,
        skip,
        _dir: dir,
    }
}

impl Drop for Sut {
    /// After a failure: stop everything without waiting on a server that
    /// may be stuck, and drop the case's PostgreSQL schema.
    fn drop(&mut self) {
        let (Some(rt), app) = (self.rt.take(), self.app.take()) else {
            return;
        };
        {
            let _inside = rt.enter();
            drop(self.api.take());
            drop(self.phones.take());
            drop(app);
        }
        if let Ok(rt) = std::sync::Arc::try_unwrap(rt) {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        drop_schema(&self.settings);
    }
}

pub(super) fn drop_schema(settings: &Settings) {
    let (Some(url), Some(schema)) = (&settings.database.url, &settings.database.schema) else {
        return;
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        if let Ok(pool) = sqlx::PgPool::connect(url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
            )))
            .execute(&pool)
            .await;
            pool.close().await;
        }
    });
}
