//! A synthetic city in Guangzhou — clients, contacts, pendants, providers,
//! carers — written straight into a store, for the demo, the benches and the
//! tests. The pendants' secrets and protocols follow the same rules as the
//! fleet's ([`crate::derive_secret`], [`crate::speaker::Mix`]), so a simulator
//! and a seeded server agree without exchanging a list.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::speaker;

use pingantong_store::{Db, NewCarer, NewClient, NewContact, NewDevice, NewProvider, StoreError};

/// District, its streets (街道), and a point near its centre.
const DISTRICTS: &[(&str, &[&str], (f64, f64))] = &[
    (
        "越秀区",
        &["北京街", "人民街", "光塔街", "六榕街"],
        (23.1290, 113.2668),
    ),
    (
        "海珠区",
        &["滨江街", "素社街", "江南中街"],
        (23.0960, 113.3170),
    ),
    (
        "荔湾区",
        &["沙面街", "逢源街", "多宝街"],
        (23.1259, 113.2440),
    ),
    (
        "天河区",
        &["石牌街", "五山街", "林和街"],
        (23.1353, 113.3612),
    ),
    (
        "白云区",
        &["三元里街", "景泰街", "同德街"],
        (23.1620, 113.2730),
    ),
    (
        "黄埔区",
        &["黄埔街", "红山街", "鱼珠街"],
        (23.1060, 113.4590),
    ),
];
const SURNAMES: &[&str] = &[
    "陈", "李", "黄", "张", "梁", "林", "何", "吴", "郭", "罗", "冯", "邓",
];
const GIVEN: &[&str] = &[
    "秀英", "桂兰", "淑珍", "伟强", "国华", "建国", "玉梅", "志明", "丽华", "德明", "美玲", "少芬",
];
const CONDITIONS: &[&str] = &[
    "高血压",
    "2型糖尿病",
    "冠心病",
    "轻度认知障碍",
    "骨质疏松",
    "慢性阻塞性肺病",
    "房颤",
];
const MEDICATIONS: &[&str] = &[
    "氨氯地平 5mg",
    "二甲双胍 500mg",
    "阿司匹林 100mg",
    "华法林 3mg",
    "阿托伐他汀 20mg",
    "沙丁胺醇吸入剂",
];
const CATEGORIES: &[&str] = &[
    "destitute",
    "advanced_age",
    "living_alone",
    "special_contribution",
];
const RELATIONS: &[&str] = &["儿子", "女儿", "侄女", "邻居", "楼长"];

#[derive(Debug, Clone)]
pub struct CitySpec {
    pub clients: usize,
    pub carers_per_provider: usize,
    /// Pendant secrets derive from this seed (see `crate::derive_secret`).
    pub secret_seed: String,
    /// What the pendants speak, as `pendant-sim --protocol` names it (`native`, `gt06`,
    /// `watch`, `h02`, `eview`, `dc09`, `mqtt`, or a mix such as `native:3,gt06:1`); device ids
    /// take their protocol's form.
    pub protocol: speaker::Mix,
    /// Pendants numbered from this one on are native whatever `protocol` says (console-probe
    /// presses native pendants beside a mixed fleet).
    pub native_from: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SeededCity {
    pub clients: usize,
    pub devices: Vec<String>,
    pub providers: usize,
    pub carers: usize,
    /// Every carer, in the order seeded; the first is on duty.
    #[serde(skip)]
    pub carer_ids: Vec<i64>,
    /// The MQTT devices' credential generations (their passwords derive from them).
    #[serde(skip)]
    pub mqtt_credentials: Vec<(String, i64)>,
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// Seed the city. Deterministic for a given spec.
pub async fn seed_city(db: &Db, spec: &CitySpec) -> Result<SeededCity, StoreError> {
    let mut rng = StdRng::seed_from_u64(spec.clients as u64 ^ 0x5A17_A770);
    let mut devices = Vec::with_capacity(spec.clients);
    let mut mqtt_devices = std::collections::HashSet::new();
    for n in 1..=spec.clients {
        let (district, streets, (lat0, lon0)) = DISTRICTS[n % DISTRICTS.len()];
        let street = pick(&mut rng, streets);
        let conditions: Vec<&str> = (0..rng.random_range(1..=3))
            .map(|_| pick(&mut rng, CONDITIONS))
            .collect();
        let medications: Vec<&str> = (0..rng.random_range(0..=3))
            .map(|_| pick(&mut rng, MEDICATIONS))
            .collect();
        let mut client = NewClient {
            name: format!("{}{}", pick(&mut rng, SURNAMES), pick(&mut rng, GIVEN)),
            address: format!(
                "广州市{district}{street}{}号{}室",
                rng.random_range(1..200),
                rng.random_range(101..1205)
            ),
            district: district.to_owned(),
            street: street.to_owned(),
            lat: Some(lat0 + rng.random_range(-0.012..0.012)),
            lon: Some(lon0 + rng.random_range(-0.012..0.012)),
            language: if rng.random_range(0..3) == 0 {
                "yue"
            } else {
                "zh-CN"
            }
            .to_owned(),
            medical_notes: conditions.join("；"),
            medications: medications.join("；"),
            allergies: if rng.random_range(0..4) == 0 {
                "青霉素".into()
            } else {
                String::new()
            },
            key_safe: String::new(),
            birth_year: Some(rng.random_range(1930..1960)),
            subsidy_category: Some(pick(&mut rng, CATEGORIES).to_owned()),
        };
        // Drawn from the position, not the generator: the rest of the city
        // stays what it was.
        client.key_safe = format!("{:04}", (client.lat.unwrap_or(0.0) * 1e6) as i64 % 10_000);
        let client_id = db.insert_client(&client).await?;
        for position in 1..=rng.random_range(1..=3) {
            db.insert_contact(&NewContact {
                client_id,
                position,
                name: format!("{}{}", pick(&mut rng, SURNAMES), pick(&mut rng, GIVEN)),
                relation: pick(&mut rng, RELATIONS).to_owned(),
                phone: format!("138{:08}", rng.random_range(0..100_000_000u32)),
                // The family app: notices arrive on the contact's MQTT topic.
                notify: Some(("mqtt".into(), String::new())),
            })
            .await?;
        }
        let protocol = match spec.native_from {
            Some(from) if n >= from => "native",
            _ => spec.protocol.protocol_of(n),
        };
        let id = speaker::device_id(protocol, n);
        if speaker::provisioned_protocol(protocol) == "mqtt" {
            mqtt_devices.insert(id.clone());
        }
        db.upsert_device(&NewDevice {
            secret: crate::derive_secret(&spec.secret_seed, &id),
            id: id.clone(),
            protocol: speaker::provisioned_protocol(protocol).into(),
            client_id: Some(client_id),
        })
        .await?;
        devices.push(id);
    }

    // One provider contracted per district, one street-level contract, and a
    // city-wide fallback provider ranked after them.
    let mut providers = Vec::new();
    for (district, streets, centre) in DISTRICTS {
        let mut coverage = vec![(district.to_string(), None)];
        if *district == "越秀区" {
            coverage = vec![(district.to_string(), Some(streets[0].to_string()))];
        }
        let id = db
            .insert_provider(&NewProvider {
                name: format!("{district}颐康居家养老服务中心"),
                service_types: "home_visit,emergency_response".into(),
                capacity: 50,
                coverage,
                rank: 0,
            })
            .await?;
        providers.push((id, *centre));
    }
    let yuexiu_general = db
        .insert_provider(&NewProvider {
            name: "越秀区长者综合服务中心".into(),
            service_types: "home_visit,emergency_response".into(),
            capacity: 40,
            coverage: vec![("越秀区".into(), None)],
            rank: 1,
        })
        .await?;
    providers.push((yuexiu_general, DISTRICTS[0].2));
    let fallback = db
        .insert_provider(&NewProvider {
            name: "广州市平安通应急援助队".into(),
            service_types: "emergency_response".into(),
            capacity: 100,
            coverage: DISTRICTS
                .iter()
                .map(|(d, _, _)| (d.to_string(), None))
                .collect(),
            rank: 9,
        })
        .await?;
    let fallback_centre = DISTRICTS[0].2;
    let mut carer_ids = Vec::new();
    for &(provider_id, (lat0, lon0)) in providers
        .iter()
        .chain(std::iter::once(&(fallback, fallback_centre)))
    {
        for k in 0..spec.carers_per_provider {
            let id = db
                .insert_carer(&NewCarer {
                    provider_id,
                    name: format!("{}{}", pick(&mut rng, SURNAMES), pick(&mut rng, GIVEN)),
                    phone: format!("139{:08}", rng.random_range(0..100_000_000u32)),
                    lat: lat0 + rng.random_range(-0.02..0.02),
                    lon: lon0 + rng.random_range(-0.02..0.02),
                    // Most are on duty; a few are off, as on any shift.
                    on_duty: k % 5 != 4,
                })
                .await?;
            carer_ids.push(id);
        }
    }
    // MQTT pendants connect with credentials of their own, like any device.
    let mqtt: Vec<String> = devices
        .iter()
        .filter(|d| mqtt_devices.contains(d.as_str()))
        .cloned()
        .collect();
    let mqtt_credentials = db
        .issue_device_credentials(&mqtt, "system:seed")
        .await
        .map_err(|e| match e {
            pingantong_store::CredentialError::Store(s) => s,
            other => StoreError::CommitFailed(other.to_string()),
        })?;
    Ok(SeededCity {
        clients: spec.clients,
        devices,
        providers: providers.len() + 1,
        carers: carer_ids.len(),
        carer_ids,
        mqtt_credentials,
    })
}
