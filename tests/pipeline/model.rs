//! The incident engine as a model: random sequences of presses, operators'
//! steps, carers' answers (late, foreign, repeated), deadlines and restarts,
//! driven against the real server on SQLite and PostgreSQL, with a plain
//! reference model predicting each step and the invariants read back from the
//! database after every one.
//!
//! The reference state machine (proptest-state-machine) only generates
//! abstract steps ("the second-newest incident", "the newest dispatch"): the
//! ids, and which carer routing picks, are the server's, so the model that
//! predicts outcomes lives beside the server and learns the offers the server
//! makes on its own (routing, a decline, an expiry), checking each is allowed.
//!
//! Budget: `PAT_MODEL_CASES` (default 4), `PAT_MODEL_STEPS` (most steps per
//! case, default 16), `PAT_MODEL_SEED` (default fixed, so CI runs the same
//! sequences), `PAT_MODEL_SHRINK_SECS` (time spent shrinking a failure, default
//! 240). `PAT_MODEL_SKIP=check,check` reports those checks instead of failing
//! on them (the model then adopts what the server did), to find the next
//! broken invariant behind a known one. `PAT_MODEL_TRACE=1` prints every
//! passing case's steps too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use pingantong::Settings;
use pingantong::api::auth::hash_password;
use pingantong::domain::{Action, Role, State};
use pingantong::store::{Db, NewClient, NewDevice, NewUser};
use pingantong_protocol::EventKind;
use pingantong_protocol::native::Reply;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const RESIDENTS: usize = 2;
const OPERATORS: [&str; 2] = ["op.an", "op.bo"];
/// The small city's three carers: near, far, and the other provider's.
const CARERS: usize = 3;
/// Sweeps this often, so a deadline fires soon after the clock passes it.
const SWEEP_MS: u64 = 50;
/// The default offer deadline (`Escalation::offer_after_ms`).
const OFFER_AFTER_MS: i64 = 90_000;

// ---------------------------------------------------------------------------
// The steps, and the reference state machine that generates them.

/// Which carer answers a dispatch.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    /// The carer it was offered to.
    Owner,
    /// Another one (0 or 1: which of the other two).
    Other(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Accept,
    Decline,
    Arrived,
    Completed,
}

impl Answer {
    fn verb(self) -> &'static str {
        match self {
            Answer::Accept => "accept",
            Answer::Decline => "decline",
            Answer::Arrived => "arrived",
            Answer::Completed => "completed",
        }
    }
}

/// One step. Incidents and dispatches are picked by age (0: the newest),
/// counted over every one the model knows, ended or not.
#[derive(Clone)]
pub enum Step {
    Sos {
        resident: usize,
    },
    CancelPress {
        resident: usize,
    },
    Claim {
        incident: u8,
        operator: usize,
    },
    Dispatch {
        incident: u8,
        carer: usize,
        operator: usize,
    },
    /// `dispatch: None` is an id that does not exist; `twice` sends it again.
    Answer {
        dispatch: Option<u8>,
        who: Who,
        answer: Answer,
        twice: bool,
    },
    /// Move the stage's clock on: deadlines fall due.
    Advance {
        secs: u32,
    },
    Resolve {
        incident: u8,
        operator: usize,
    },
    Close {
        incident: u8,
        operator: usize,
    },
    Cancel {
        incident: u8,
        operator: usize,
    },
    Restart,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Sos { resident } => write!(f, "Sos(resident {resident})"),
            Step::CancelPress { resident } => write!(f, "CancelPress(resident {resident})"),
            Step::Claim { incident, operator } => {
                write!(f, "Claim(incident#{incident}, {})", OPERATORS[*operator])
            }
            Step::Dispatch {
                incident,
                carer,
                operator,
            } => write!(
                f,
                "Dispatch(incident#{incident}, carer#{carer}, {})",
                OPERATORS[*operator]
            ),
            Step::Answer {
                dispatch,
                who,
                answer,
                twice,
            } => {
                match dispatch {
                    Some(d) => write!(f, "Answer(dispatch#{d}")?,
                    None => write!(f, "Answer(no such dispatch")?,
                }
                write!(
                    f,
                    ", {who:?}, {}{})",
                    answer.verb(),
                    if *twice { ", twice" } else { "" }
                )
            }
            Step::Advance { secs } => write!(f, "Advance({secs} s)"),
            Step::Resolve { incident, operator } => {
                write!(f, "Resolve(incident#{incident}, {})", OPERATORS[*operator])
            }
            Step::Close { incident, operator } => {
                write!(f, "Close(incident#{incident}, {})", OPERATORS[*operator])
            }
            Step::Cancel { incident, operator } => {
                write!(f, "Cancel(incident#{incident}, {})", OPERATORS[*operator])
            }
            Step::Restart => write!(f, "Restart"),
        }
    }
}

/// What the generator knows: whether anyone has pressed yet (steps about
/// incidents before the first press would only test the empty list).
pub struct Steps;

impl ReferenceStateMachine for Steps {
    type State = u32;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<u32> {
        Just(0).boxed()
    }

    fn transitions(presses: &u32) -> BoxedStrategy<Step> {
        let sos = (0..RESIDENTS).prop_map(|resident| Step::Sos { resident });
        if *presses == 0 {
            return sos.boxed();
        }
        let op = 0..OPERATORS.len();
        let who = prop_oneof![4 => Just(Who::Owner), 1 => (0u8..2).prop_map(Who::Other)];
        let answer = prop_oneof![
            Just(Answer::Accept),
            Just(Answer::Decline),
            Just(Answer::Arrived),
            Just(Answer::Completed),
        ];
        prop_oneof![
            3 => sos,
            1 => (0..RESIDENTS).prop_map(|resident| Step::CancelPress { resident }),
            2 => (0u8..4, op.clone()).prop_map(|(incident, operator)| Step::Claim { incident, operator }),
            2 => (0u8..4, 0..CARERS, op.clone()).prop_map(|(incident, carer, operator)| {
                Step::Dispatch { incident, carer, operator }
            }),
            6 => (
                prop::option::weighted(0.9, 0u8..4),
                who,
                answer,
                prop::bool::weighted(0.2),
            )
                .prop_map(|(dispatch, who, answer, twice)| Step::Answer {
                    dispatch,
                    who,
                    answer,
                    twice
                }),
            2 => prop_oneof![Just(30u32), Just(61), Just(91)].prop_map(|secs| Step::Advance { secs }),
            2 => (0u8..4, op.clone()).prop_map(|(incident, operator)| Step::Resolve { incident, operator }),
            2 => (0u8..4, op.clone()).prop_map(|(incident, operator)| Step::Close { incident, operator }),
            1 => (0u8..4, op).prop_map(|(incident, operator)| Step::Cancel { incident, operator }),
            1 => Just(Step::Restart),
        ]
        .boxed()
    }

    fn preconditions(presses: &u32, step: &Step) -> bool {
        matches!(step, Step::Sos { .. }) || *presses > 0
    }

    fn apply(presses: u32, step: &Step) -> u32 {
        presses + u32::from(matches!(step, Step::Sos { .. }))
    }
}

// ---------------------------------------------------------------------------
// The reference model: what each step must do.

/// A dispatch's state as the model expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offer {
    Offered,
    Accepted,
    Arrived,
    Completed,
    Declined,
    Expired,
    /// The incident ended while the offer or job was live.
    Withdrawn,
}

impl Offer {
    fn parse(s: &str) -> Offer {
        match s {
            "offered" => Offer::Offered,
            "accepted" => Offer::Accepted,
            "arrived" => Offer::Arrived,
            "completed" => Offer::Completed,
            "declined" => Offer::Declined,
            "expired" => Offer::Expired,
            "withdrawn" => Offer::Withdrawn,
            other => panic!("dispatch state {other:?} is not one the model knows"),
        }
    }

    /// Someone is still asked, or on the way, or there.
    fn is_live(self) -> bool {
        matches!(self, Offer::Offered | Offer::Accepted | Offer::Arrived)
    }
}

#[derive(Clone, Debug)]
struct Incident {
    resident: usize,
    state: State,
    claimed_by: Option<String>,
}

#[derive(Clone, Debug)]
struct Dispatch {
    incident: i64,
    carer: i64,
    state: Offer,
    /// The stage's clock at which an unanswered offer expires.
    due_at: i64,
}

/// Rules the model holds the server to beyond the state machine's table.
#[derive(Clone, Copy)]
struct Policy {
    /// `completed` only after `arrived`.
    completed_needs_arrival: bool,
}

const POLICY: Policy = Policy {
    completed_needs_arrival: true,
};

/// What a request must get: done, or refused with a 409 whose error names
/// something the model knows.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Done,
    /// The named check, and a phrase the error must contain.
    Refused(&'static str, String),
}

#[derive(Default)]
struct Model {
    incidents: BTreeMap<i64, Incident>,
    dispatches: BTreeMap<i64, Dispatch>,
    /// (device, seq) of every press → the incident it must belong to.
    alarms: BTreeMap<(String, i64), Option<i64>>,
}

impl Model {
    fn open_incident_of(&self, resident: usize) -> Option<i64> {
        self.incidents
            .iter()
            .find(|(_, i)| i.resident == resident && i.state.is_open())
            .map(|(id, _)| *id)
    }

    /// The incident `age` places back from the newest, wrapping.
    fn incident_by_age(&self, age: u8) -> Option<i64> {
        let ids: Vec<i64> = self.incidents.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[ids.len() - 1 - usize::from(age) % ids.len()])
    }

    fn dispatch_by_age(&self, age: u8) -> Option<i64> {
        let ids: Vec<i64> = self.dispatches.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[ids.len() - 1 - usize::from(age) % ids.len()])
    }

    fn live_offer(&self, incident: i64, carer: i64) -> Option<i64> {
        self.dispatches
            .iter()
            .find(|(_, d)| d.incident == incident && d.carer == carer && d.state.is_live())
            .map(|(id, _)| *id)
    }

    /// An operator's step: the state machine's verdict, and a claim by
    /// anyone on an incident someone holds is refused.
    fn expect_step(&self, incident: i64, action: Action) -> (Expect, Option<State>) {
        let i = &self.incidents[&incident];
        if action == Action::Claim
            && let Some(who) = &i.claimed_by
        {
            return (
                Expect::Refused("refusal_matches", format!("already claimed by {who}")),
                None,
            );
        }
        match i.state.apply(action) {
            Ok(to) => (Expect::Done, Some(to)),
            Err(e) => (Expect::Refused("refusal_matches", e.to_string()), None),
        }
    }

    /// A step applied: the incident moves, and when it ends every offer and
    /// job still live on it is withdrawn.
    fn move_incident(&mut self, incident: i64, to: State, claimed_by: Option<&str>) {
        let i = self.incidents.get_mut(&incident).expect("known incident");
        i.state = to;
        if let Some(who) = claimed_by {
            i.claimed_by = Some(who.to_owned());
        }
        if !to.is_open() {
            for d in self.dispatches.values_mut() {
                if d.incident == incident && d.state.is_live() {
                    d.state = Offer::Withdrawn;
                }
            }
        }
    }

    fn expect_dispatch(&self, incident: i64, carer: i64) -> Expect {
        let i = &self.incidents[&incident];
        if !i.state.is_open() {
            return Expect::Refused("refusal_matches", format!("is {}", i.state));
        }
        if self.live_offer(incident, carer).is_some() {
            return Expect::Refused("one_live_offer", format!("carer {carer}"));
        }
        Expect::Done
    }

    /// A carer's answer to dispatch `id`: refused, or done (and whether it is new).
    fn expect_answer(&self, id: i64, carer: i64, answer: Answer) -> (Expect, bool) {
        let Some(d) = self.dispatches.get(&id) else {
            return (
                Expect::Refused("refusal_matches", format!("dispatch {id} does not exist")),
                false,
            );
        };
        if d.carer != carer {
            return (
                Expect::Refused("foreign_answer_refused", format!("dispatch {id}")),
                false,
            );
        }
        use Offer as O;
        let fresh = match (answer, d.state) {
            (Answer::Accept, O::Offered) => Some(true),
            (Answer::Accept, O::Accepted) => Some(false),
            (Answer::Decline, O::Offered) => Some(true),
            (Answer::Decline, O::Declined) => Some(false),
            (Answer::Arrived, O::Accepted) => Some(true),
            (Answer::Arrived, O::Arrived) => Some(false),
            (Answer::Completed, O::Arrived) => Some(true),
            (Answer::Completed, O::Accepted) if !POLICY.completed_needs_arrival => Some(true),
            (Answer::Completed, O::Completed) => Some(false),
            _ => None,
        };
        match fresh {
            Some(fresh) => (Expect::Done, fresh),
            None => {
                let check = match (answer, d.state) {
                    (_, O::Withdrawn) => "late_answer_refused",
                    (Answer::Completed, O::Accepted) => "completed_needs_arrival",
                    _ => "refusal_matches",
                };
                (Expect::Refused(check, format!("dispatch {id}")), false)
            }
        }
    }

    /// A new answer applied: the dispatch moves, and the incident with it
    /// where the state machine allows (a decline's next offer is the server's).
    fn answered(&mut self, id: i64, answer: Answer) {
        let d = self.dispatches.get_mut(&id).expect("known dispatch");
        d.state = match answer {
            Answer::Accept => Offer::Accepted,
            Answer::Decline => Offer::Declined,
            Answer::Arrived => Offer::Arrived,
            Answer::Completed => Offer::Completed,
        };
        let incident = d.incident;
        let action = match answer {
            Answer::Accept => Action::CarerAccept,
            Answer::Arrived => Action::CarerArrive,
            Answer::Completed => Action::Resolve,
            Answer::Decline => return,
        };
        if let Ok(to) = self.incidents[&incident].state.apply(action) {
            self.move_incident(incident, to, None);
        }
    }

    /// The clock moved to `now`: offers still unanswered at their deadline expire.
    fn advanced(&mut self, now: i64) {
        for d in self.dispatches.values_mut() {
            if d.state == Offer::Offered && d.due_at <= now {
                d.state = Offer::Expired;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// What the database says.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// id → (state, claimed_by, client_id)
    incidents: BTreeMap<i64, (String, Option<String>, Option<i64>)>,
    /// id → (incident, carer, state)
    dispatches: BTreeMap<i64, (i64, i64, String)>,
    /// (device, seq) → (kind, incident)
    alarms: BTreeMap<(String, i64), (String, Option<i64>)>,
    timeline_lines: i64,
}

/// Run one read-only query on whichever backend `$db` is.
macro_rules! read {
    ($db:expr, $q:expr, $t:ty) => {
        match $db {
            Db::Sqlite { read, .. } => sqlx::query_as::<_, $t>($q).fetch_all(read).await,
            Db::Postgres(p) => sqlx::query_as::<_, $t>($q).fetch_all(p).await,
        }
        .expect("the model's read")
    };
}

async fn look(db: &Db) -> Seen {
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
    }
}

/// Work the stage still owes at `now`: alarms not handled, incidents not
/// routed, deadlines passed and not fired.
async fn owed(db: &Db, now: i64) -> i64 {
    let q = sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT COUNT(*) FROM alarms WHERE processed_at IS NULL) + \
         (SELECT COUNT(*) FROM incidents WHERE routed_at IS NULL AND client_id IS NOT NULL \
          AND state NOT IN ('resolved', 'closed', 'cancelled', 'merged')) + \
         (SELECT COUNT(*) FROM timers WHERE fired_at IS NULL AND due_at <= {now})"
    ));
    let n: Vec<(i64,)> = match db {
        Db::Sqlite { read, .. } => sqlx::query_as(q).fetch_all(read).await,
        Db::Postgres(p) => sqlx::query_as(q).fetch_all(p).await,
    }
    .expect("the model's read");
    n[0].0
}

// ---------------------------------------------------------------------------
// The system under test: a real server, its people, and the model beside it.

struct Resident {
    client_id: i64,
    device: String,
    secret: Vec<u8>,
    seq: u32,
}

pub struct Sut {
    app: Option<TestApp>,
    api: Option<Api>,
    /// Shared so a step can run on it while it borrows the rest of `Sut`.
    rt: Option<std::sync::Arc<tokio::runtime::Runtime>>,
    settings: Settings,
    clock: ManualClock,
    residents: Vec<Resident>,
    /// (carer id, token)
    carers: Vec<(i64, String)>,
    operators: Vec<String>,
    model: Model,
    /// What each step did, for the failure report.
    trace: Vec<String>,
    skip: BTreeSet<String>,
    _dir: tempfile::TempDir,
}

impl Sut {
    /// A check: when it fails, the case ends with the story so far, unless
    /// it is only reported (`PAT_MODEL_SKIP`).
    fn check(&mut self, name: &'static str, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            return;
        }
        let what = what();
        if self.skip.contains(name) {
            self.trace
                .push(format!("    (not asserted) {name}: {what}"));
            return;
        }
        let story = self.trace.join("\n");
        // Not `panic!`: proptest catches the unwind either way, and the
        // panic hook would print every shrinking attempt's story.
        std::panic::resume_unwind(Box::new(format!(
            "invariant `{name}` broken: {what}\nsteps of this case:\n{story}"
        )));
    }

    fn app(&self) -> &TestApp {
        self.app.as_ref().expect("the server is running")
    }

    fn api(&self) -> &Api {
        self.api.as_ref().expect("the server is running")
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("the runtime").block_on(f)
    }
}

async fn add_account(db: &Db, username: &str, role: Role, carer_id: Option<i64>) {
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

fn start(backend: Backend) -> Sut {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        recovery_sweep_ms: SWEEP_MS,
        ..test_settings(backend, Broker::Mosquitto, dir.path())
    };
    let clock = ManualClock::starting_now();
    let (app, residents, carers, operators) = rt.block_on(async {
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
        (app, residents, carers, operators)
    });
    let skip = std::env::var("PAT_MODEL_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    Sut {
        api: Some(Api::of(&app)),
        app: Some(app),
        rt: Some(std::sync::Arc::new(rt)),
        settings,
        clock,
        residents,
        carers,
        operators,
        model: Model::default(),
        trace: Vec::new(),
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
            drop(app);
        }
        if let Ok(rt) = std::sync::Arc::try_unwrap(rt) {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        drop_schema(&self.settings);
    }
}

fn drop_schema(settings: &Settings) {
    let (Some(url), Some(schema)) = (&settings.database_url, &settings.database_schema) else {
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

impl Sut {
    /// Wait until the stage owes nothing and the database has not changed
    /// for two sweeps (a deadline's next offer follows its expiry by a few
    /// statements).
    async fn settle(&self) -> Seen {
        let db = &self.app().db;
        let quiet = Duration::from_millis(2 * SWEEP_MS + 20);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut last = look(db).await;
        let mut since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let now = look(db).await;
            if now != last {
                last = now;
                since = tokio::time::Instant::now();
            } else if since.elapsed() >= quiet && owed(db, self.clock.now()).await == 0 {
                return last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not settle within 15 s"
            );
        }
    }

    async fn press(&mut self, resident: usize, kind: EventKind) -> (String, i64) {
        let app = self.app.as_ref().expect("running");
        let r = &mut self.residents[resident];
        r.seq += 1;
        let mut dev = Device::connect(app.native).await;
        let (reply, _) = dev.send(&event(&r.device, r.seq, kind), &r.secret).await;
        assert!(matches!(reply, Reply::Ack { .. }), "{reply:?}");
        (r.device.clone(), i64::from(r.seq))
    }

    /// One step against the server, with the model's prediction checked.
    async fn run(&mut self, step: &Step) {
        self.trace
            .push(format!("{:>3}. {step:?}", self.trace.len() + 1));
        match *step {
            Step::Sos { resident } => {
                let folds_into = self.model.open_incident_of(resident);
                let key = self.press(resident, EventKind::Sos).await;
                let seen = self.settle().await;
                let client = self.residents[resident].client_id;
                let new: Vec<i64> = seen
                    .incidents
                    .iter()
                    .filter(|(id, _)| !self.model.incidents.contains_key(id))
                    .map(|(id, _)| *id)
                    .collect();
                let target = match folds_into {
                    Some(open) => {
                        self.check("one_incident_per_person", new.is_empty(), || {
                            format!("a press while {open} is open opened {new:?}")
                        });
                        Some(open)
                    }
                    None => {
                        self.check("alarm_has_incident", new.len() == 1, || {
                            format!("a press with nothing open opened {new:?}")
                        });
                        new.first().copied().inspect(|&id| {
                            self.check(
                                "state_matches",
                                seen.incidents[&id].2 == Some(client),
                                || format!("incident {id} is not resident {resident}'s"),
                            );
                            self.model.incidents.insert(
                                id,
                                Incident {
                                    resident,
                                    state: State::Queued,
                                    claimed_by: None,
                                },
                            );
                        })
                    }
                };
                self.note(format!("-> incident {target:?}"));
                self.model.alarms.insert(key, target);
            }
            Step::CancelPress { resident } => {
                let open = self.model.open_incident_of(resident);
                let key = self.press(resident, EventKind::Cancel).await;
                self.note(format!("-> cancel request on {open:?}"));
                // A cancel with nothing open belongs nowhere; one with an
                // open incident is that incident's.
                if open.is_some() {
                    self.model.alarms.insert(key, open);
                }
            }
            Step::Claim { incident, operator } => {
                self.operator_step(incident, operator, Action::Claim, "claim", Value::Null)
                    .await
            }
            Step::Resolve { incident, operator } => {
                self.operator_step(incident, operator, Action::Resolve, "resolve", Value::Null)
                    .await
            }
            Step::Close { incident, operator } => {
                let body = json!({ "outcome": "help_given" });
                self.operator_step(incident, operator, Action::Close, "close", body)
                    .await
            }
            Step::Cancel { incident, operator } => {
                let body = json!({ "detail": "false alarm" });
                self.operator_step(incident, operator, Action::Cancel, "cancel", body)
                    .await
            }
            Step::Dispatch {
                incident,
                carer,
                operator,
            } => self.dispatch(incident, carer, operator).await,
            Step::Answer {
                dispatch,
                who,
                answer,
                twice,
            } => {
                let Some((id, carer)) = self.pick_answer(dispatch, who) else {
                    self.note("-> no dispatch yet".into());
                    return;
                };
                self.answer(id, carer, answer).await;
                if twice {
                    self.answer(id, carer, answer).await;
                }
            }
            Step::Advance { secs } => {
                self.clock.advance(Duration::from_secs(u64::from(secs)));
                self.model.advanced(self.clock.now());
            }
            Step::Restart => {
                let app = self.app.take().expect("running");
                self.api = None;
                app.stop().await;
                let app = TestApp::spawn_with_clock(self.settings.clone(), None, &self.clock).await;
                self.api = Some(Api::of(&app));
                self.app = Some(app);
            }
        }
    }

    fn note(&mut self, what: String) {
        if let Some(last) = self.trace.last_mut() {
            last.push(' ');
            last.push_str(&what);
        }
    }

    fn pick_answer(&self, dispatch: Option<u8>, who: Who) -> Option<(i64, i64)> {
        let (id, owner) = match dispatch {
            Some(age) => {
                let id = self.model.dispatch_by_age(age)?;
                (id, self.model.dispatches[&id].carer)
            }
            None => (
                self.model.dispatches.keys().last().copied().unwrap_or(0) + 1000,
                self.carers[0].0,
            ),
        };
        let carer = match who {
            Who::Owner => owner,
            Who::Other(n) => {
                let others: Vec<i64> = self
                    .carers
                    .iter()
                    .map(|c| c.0)
                    .filter(|c| *c != owner)
                    .collect();
                others[usize::from(n) % others.len()]
            }
        };
        Some((id, carer))
    }

    /// See that a request got what the model expects; on success, true.
    fn expect(&mut self, expect: &Expect, status: StatusCode, body: &Value) -> bool {
        let error = body["error"].as_str().unwrap_or_default().to_owned();
        self.note(format!("-> {} {}", status.as_u16(), error));
        match expect {
            Expect::Done => {
                self.check("refusal_matches", status.is_success(), || {
                    format!("the model allows it; the server said {status} {body}")
                });
                status.is_success()
            }
            Expect::Refused(check, phrase) => {
                self.check(check, !status.is_success(), || {
                    format!("the model refuses it ({phrase}); the server did it: {body}")
                });
                if !status.is_success() {
                    self.check(
                        "clear_refusal",
                        status == StatusCode::CONFLICT && error.contains(phrase.as_str()),
                        || format!("refused with {status} {error:?}, not 409 naming {phrase:?}"),
                    );
                }
                status.is_success()
            }
        }
    }

    async fn operator_step(
        &mut self,
        age: u8,
        operator: usize,
        action: Action,
        path: &str,
        body: Value,
    ) {
        let Some(id) = self.model.incident_by_age(age) else {
            return;
        };
        let (expect, to) = self.model.expect_step(id, action);
        let (status, answer) = self
            .api()
            .post(
                &format!("/api/v1/incidents/{id}/{path}"),
                &self.operators[operator],
                body,
            )
            .await;
        self.note(format!("[incident {id}]"));
        if self.expect(&expect, status, &answer)
            && let Some(to) = to
        {
            self.check("state_matches", answer["state"] == to.as_str(), || {
                format!("incident {id} is {}, the model says {to}", answer["state"])
            });
            let who = format!("operator:{}", OPERATORS[operator]);
            self.model
                .move_incident(id, to, (action == Action::Claim).then_some(who.as_str()));
        }
    }

    async fn dispatch(&mut self, age: u8, carer: usize, operator: usize) {
        let Some(id) = self.model.incident_by_age(age) else {
            return;
        };
        let carer_id = self.carers[carer].0;
        let expect = self.model.expect_dispatch(id, carer_id);
        let (status, body) = self
            .api()
            .post(
                &format!("/api/v1/incidents/{id}/dispatch"),
                &self.operators[operator],
                json!({ "carer_id": carer_id }),
            )
            .await;
        self.note(format!("[incident {id}, carer {carer_id}]"));
        if self.expect(&expect, status, &body) {
            let d = body["dispatch_id"].as_i64().expect("a dispatch id");
            self.note(format!("dispatch {d}"));
            self.model.dispatches.insert(
                d,
                Dispatch {
                    incident: id,
                    carer: carer_id,
                    state: Offer::Offered,
                    due_at: self.clock.now() + OFFER_AFTER_MS,
                },
            );
        }
    }

    async fn answer(&mut self, id: i64, carer: i64, answer: Answer) {
        let (expect, fresh) = self.model.expect_answer(id, carer, answer);
        let token = &self
            .carers
            .iter()
            .find(|c| c.0 == carer)
            .expect("a carer")
            .1;
        let (status, body) = self
            .api()
            .post(
                &format!("/api/v1/dispatches/{id}/answer"),
                token,
                json!({ "action": answer.verb() }),
            )
            .await;
        self.note(format!(
            "[dispatch {id} by carer {carer}: {}]",
            answer.verb()
        ));
        if self.expect(&expect, status, &body) && expect == Expect::Done && fresh {
            self.model.answered(id, answer);
        }
    }

    /// Offers the server made on its own since the model last looked: each
    /// must be on an open incident and fresh; the model learns them.
    fn learn_offers(&mut self, step: &Step, seen: &Seen) {
        let news: Vec<(i64, (i64, i64, String))> = seen
            .dispatches
            .iter()
            .filter(|(id, _)| !self.model.dispatches.contains_key(id))
            .map(|(id, d)| (*id, d.clone()))
            .collect();
        for (id, (incident, carer, state)) in news {
            let may = matches!(
                step,
                Step::Sos { .. } | Step::Answer { .. } | Step::Advance { .. } | Step::Restart
            );
            self.check("no_offer_unasked", may, || {
                format!("dispatch {id} appeared after {step:?}")
            });
            let open = self
                .model
                .incidents
                .get(&incident)
                .is_some_and(|i| i.state.is_open());
            self.check("withdrawn_on_end", open, || {
                format!("the server offered dispatch {id} on incident {incident}, which has ended")
            });
            self.note(format!("(server offered dispatch {id} to carer {carer})"));
            self.model.dispatches.insert(
                id,
                Dispatch {
                    incident,
                    carer,
                    state: Offer::parse(&state),
                    due_at: self.clock.now() + OFFER_AFTER_MS,
                },
            );
        }
    }

    /// Everything the database says, against the model and the invariants;
    /// where a check is only reported, the model adopts what the server did.
    fn compare(&mut self, seen: &Seen) {
        // No live offer or job on an ended incident.
        for (id, (incident, _, state)) in &seen.dispatches {
            let ended = seen
                .incidents
                .get(incident)
                .and_then(|i| State::parse(&i.0))
                .is_some_and(|s| !s.is_open());
            let live = Offer::parse(state).is_live();
            self.check("withdrawn_on_end", !(ended && live), || {
                format!(
                    "dispatch {id} is {state} on incident {incident}, which is {}",
                    seen.incidents[incident].0
                )
            });
        }
        // At most one live offer per carer per incident.
        let mut live = BTreeMap::<(i64, i64), Vec<i64>>::new();
        for (id, (incident, carer, state)) in &seen.dispatches {
            if Offer::parse(state).is_live() {
                live.entry((*incident, *carer)).or_default().push(*id);
            }
        }
        for ((incident, carer), ids) in live {
            self.check("one_live_offer", ids.len() <= 1, || {
                format!("carer {carer} holds live dispatches {ids:?} on incident {incident}")
            });
        }
        // Every call for help belongs to an incident (the one the model says).
        for (key, (kind, incident)) in &seen.alarms {
            if kind == "sos" {
                self.check("alarm_has_incident", incident.is_some(), || {
                    format!("alarm {key:?} ({kind}) belongs to no incident")
                });
            }
            if let Some(want) = self.model.alarms.get(key).copied() {
                self.check("alarm_has_incident", *incident == want, || {
                    format!("alarm {key:?} ({kind}) belongs to {incident:?}, not {want:?}")
                });
            }
        }
        // Closed is final, and every incident is where the model says.
        let known: Vec<i64> = self.model.incidents.keys().copied().collect();
        for id in known {
            let Some((state, claimed_by, _)) = seen.incidents.get(&id).cloned() else {
                self.check("state_matches", false, || format!("incident {id} vanished"));
                continue;
            };
            let want = self.model.incidents[&id].clone();
            if want.state == State::Closed {
                self.check("closed_is_final", state == "closed", || {
                    format!("closed incident {id} is now {state}")
                });
            }
            self.check(
                "state_matches",
                state == want.state.as_str() && claimed_by == want.claimed_by,
                || {
                    format!(
                        "incident {id} is {state} claimed by {claimed_by:?}; the model says {} by {:?}",
                        want.state, want.claimed_by
                    )
                },
            );
            let i = self.model.incidents.get_mut(&id).expect("known");
            i.state = State::parse(&state).expect("a known state");
            i.claimed_by = claimed_by;
        }
        let known: Vec<i64> = self.model.dispatches.keys().copied().collect();
        for id in known {
            let state = Offer::parse(&seen.dispatches[&id].2);
            let want = self.model.dispatches[&id].state;
            let check = if want == Offer::Withdrawn {
                "withdrawn_on_end"
            } else {
                "state_matches"
            };
            self.check(check, state == want, || {
                format!("dispatch {id} is {state:?}; the model says {want:?}")
            });
            self.model.dispatches.get_mut(&id).expect("known").state = state;
        }
    }
}

/// One engine per backend: `PG` picks PostgreSQL.
pub struct Engine<const PG: bool>;

impl<const PG: bool> StateMachineTest for Engine<PG> {
    type SystemUnderTest = Sut;
    type Reference = Steps;

    fn init_test(_: &u32) -> Sut {
        start(if PG {
            Backend::Postgres
        } else {
            Backend::Sqlite
        })
    }

    fn apply(mut sut: Sut, _: &u32, step: Step) -> Sut {
        let rt = std::sync::Arc::clone(sut.rt.as_ref().expect("the runtime"));
        rt.block_on(async {
            sut.run(&step).await;
            let seen = sut.settle().await;
            sut.learn_offers(&step, &seen);
            sut.compare(&seen);
        });
        sut
    }

    fn teardown(mut sut: Sut, _: u32) {
        if std::env::var_os("PAT_MODEL_TRACE").is_some() {
            eprintln!("case passed:\n{}\n", sut.trace.join("\n"));
        }
        let app = sut.app.take().expect("running");
        sut.api = None;
        sut.block_on(app.stop());
    }
}

struct Budget {
    cases: u32,
    steps: usize,
    seed: u64,
    shrink_secs: u32,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn budget() -> Budget {
    Budget {
        cases: env_or("PAT_MODEL_CASES", 4),
        steps: env_or("PAT_MODEL_STEPS", 16),
        seed: env_or("PAT_MODEL_SEED", 0x5eed_2026),
        shrink_secs: env_or("PAT_MODEL_SHRINK_SECS", 240),
    }
}

fn run<const PG: bool>() {
    let b = budget();
    let config = Config {
        cases: b.cases,
        max_shrink_time: b.shrink_secs * 1000,
        max_shrink_iters: u32::MAX,
        failure_persistence: None,
        ..Config::default()
    };
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&b.seed.to_le_bytes());
    seed[8] = u8::from(PG);
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    );
    let result = runner.run(
        &Steps::sequential_strategy(1..=b.steps),
        |(initial, steps, seen)| {
            Engine::<PG>::test_sequential(config.clone(), initial, steps, seen);
            Ok(())
        },
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, (_, steps, _))) => {
            let list: Vec<String> = steps
                .iter()
                .enumerate()
                .map(|(n, s)| format!("{:>3}. {s:?}", n + 1))
                .collect();
            panic!(
                "the incident engine broke the model (seed {:#x}).\nminimal steps:\n{}\n\n{why}",
                b.seed,
                list.join("\n")
            );
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn incident_engine_model_sqlite() {
    run::<false>();
}

#[test]
fn incident_engine_model_postgres() {
    run::<true>();
}
