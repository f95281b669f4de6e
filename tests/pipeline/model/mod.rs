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
//! Checks, by name: `withdrawn_on_end` (an ended incident keeps no offer or
//! job its end takes back, and gets no new offer), `one_live_offer` (at most
//! one per carer per incident), `late_answer_refused` and
//! `foreign_answer_refused` (with `clear_refusal`: the status and an error
//! naming the dispatch), `completed_needs_arrival`, `take_over_needed`,
//! `withdrawal_told` (the phone hears of it), `alarm_has_incident` (every SOS in the incident the model says, a cancel
//! pressed while one is open in it), `closed_is_final`, `busy_while_on_a_job`,
//! `no_offer_unasked`, `one_incident_per_person`, `state_matches` and
//! `refusal_matches` (everything else the model predicts).
//!
//! Budget: `PAT_MODEL_CASES` (default 10), `PAT_MODEL_STEPS` (most steps per
//! case, default 24), `PAT_MODEL_SEED` (default fixed, so CI runs the same
//! sequences), `PAT_MODEL_SHRINK_SECS` (time spent shrinking a failure,
//! default 120): about a minute per backend in a debug build.
//! `PAT_MODEL_SKIP=check,check` reports those checks instead of failing on
//! them (the model then adopts what the server did), to find the next broken
//! invariant behind a known one. `PAT_MODEL_TRACE=1` prints every passing
//! case's steps too.

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

mod checks;
mod database;
mod reference;
mod server;
mod setup;
mod steps;

use database::*;
use reference::*;
use server::*;
use setup::*;
use steps::*;

const RESIDENTS: usize = 2;
const OPERATORS: [&str; 2] = ["op.an", "op.bo"];
/// The small city's three carers: near, far, and the other provider's.
const CARERS: usize = 3;
/// Sweeps this often, so a deadline fires soon after the clock passes it.
const SWEEP_MS: u64 = 50;
/// The default offer deadline (`Escalation::offer_after_ms`).
const OFFER_AFTER_MS: i64 = 90_000;

/// One engine per backend: `PG` picks PostgreSQL.
struct Engine<const PG: bool>;

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
            let seen = sut.settle(Sut::quiet_after(&step)).await;
            sut.learn_offers(&step, &seen);
            sut.compare(&seen);
            sut.withdrawals_told().await;
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
        cases: env_or("PAT_MODEL_CASES", 10),
        steps: env_or("PAT_MODEL_STEPS", 24),
        seed: env_or("PAT_MODEL_SEED", 0x5eed_2026),
        shrink_secs: env_or("PAT_MODEL_SHRINK_SECS", 120),
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
