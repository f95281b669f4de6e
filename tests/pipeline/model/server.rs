//! The system under test: a real server, its residents, operators and carers, and the
//! model beside it; each step driven over the wire and its answer checked.

use super::*;

pub(super) struct Resident {
    pub(super) client_id: i64,
    pub(super) device: String,
    pub(super) secret: Vec<u8>,
    pub(super) seq: u32,
}

pub(super) struct Sut {
    pub(super) app: Option<TestApp>,
    pub(super) api: Option<Api>,
    /// What the carers' phones received.
    pub(super) phones: Option<MqttProbe>,
    /// Shared so a step can run on it while it borrows the rest of `Sut`.
    pub(super) rt: Option<std::sync::Arc<tokio::runtime::Runtime>>,
    pub(super) settings: Settings,
    pub(super) clock: ManualClock,
    pub(super) residents: Vec<Resident>,
    /// (carer id, token)
    pub(super) carers: Vec<(i64, String)>,
    pub(super) operators: Vec<String>,
    pub(super) model: Model,
    /// What each step did, for the failure report.
    pub(super) trace: Vec<String>,
    /// A check was only reported this step and the server went its own
    /// way: the state that follows is adopted, not held against it again.
    pub(super) excused: bool,
    /// Steps run so far in this case.
    pub(super) steps: usize,
    pub(super) skip: BTreeSet<String>,
    pub(super) _dir: tempfile::TempDir,
}

impl Sut {
    /// A check: when it fails, the case ends with the story so far, unless
    /// it is only reported (`PAT_MODEL_SKIP`).
    pub(super) fn check(&mut self, name: &'static str, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            return;
        }
        let what = what();
        if self.skip.contains(name) {
            self.trace
                .push(format!("    (not asserted) {name}: {what}"));
            self.excused = true;
            return;
        }
        let story = self.trace.join("\n");
        // Not `panic!`: proptest catches the unwind either way, and the
        // panic hook would print every shrinking attempt's story.
        std::panic::resume_unwind(Box::new(format!(
            "invariant `{name}` broken: {what}\nsteps of this case:\n{story}"
        )));
    }

    pub(super) fn app(&self) -> &TestApp {
        self.app.as_ref().expect("the server is running")
    }

    pub(super) fn api(&self) -> &Api {
        self.api.as_ref().expect("the server is running")
    }

    pub(super) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.as_ref().expect("the runtime").block_on(f)
    }
}

impl Sut {
    /// Wait until the stage owes nothing and the database has not changed
    /// for `quiet`. Most steps' work is done when their request is answered
    /// or their alarm handled; a deadline's next offer follows its expiry by
    /// a few statements on the stage's own time, and a restart's first sweep
    /// runs as it starts, so those steps wait longer ([`Sut::quiet_after`]).
    pub(super) async fn settle(&self, quiet: Duration) -> Seen {
        let db = &self.app().db;
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

    /// How long the database must stay unchanged after `step`.
    pub(super) fn quiet_after(step: &Step) -> Duration {
        match step {
            Step::Advance { .. } | Step::Restart => Duration::from_millis(8 * SWEEP_MS),
            _ => Duration::from_millis(2 * SWEEP_MS + 20),
        }
    }

    pub(super) async fn press(&mut self, resident: usize, kind: EventKind) -> (String, i64) {
        let app = self.app.as_ref().expect("running");
        let r = &mut self.residents[resident];
        r.seq += 1;
        let mut dev = Device::connect(app.native).await;
        let (reply, _) = dev.send(&event(&r.device, r.seq, kind), &r.secret).await;
        assert!(matches!(reply, Reply::Ack { .. }), "{reply:?}");
        (r.device.clone(), i64::from(r.seq))
    }

    /// One step against the server, with the model's prediction checked.
    pub(super) async fn run(&mut self, step: &Step) {
        self.steps += 1;
        self.trace.push(format!("{:>3}. {step:?}", self.steps));
        match *step {
            Step::Sos { resident } => {
                let folds_into = self.model.open_incident_of(resident);
                let key = self.press(resident, EventKind::Sos).await;
                let seen = self.settle(Self::quiet_after(step)).await;
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
                let step = OperatorStep {
                    action: Action::Claim,
                    take_over: false,
                    reason: false,
                };
                self.operator_step(incident, operator, step).await
            }
            Step::Resolve {
                incident,
                operator,
                take_over,
            } => {
                let step = OperatorStep {
                    action: Action::Resolve,
                    take_over,
                    reason: false,
                };
                self.operator_step(incident, operator, step).await
            }
            Step::Close {
                incident,
                operator,
                take_over,
            } => {
                let step = OperatorStep {
                    action: Action::Close,
                    take_over,
                    reason: false,
                };
                self.operator_step(incident, operator, step).await
            }
            Step::Cancel {
                incident,
                operator,
                take_over,
                reason,
            } => {
                let step = OperatorStep {
                    action: Action::Cancel,
                    take_over,
                    reason,
                };
                self.operator_step(incident, operator, step).await
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
                let answer = match (answer, self.model.dispatches.get(&id).map(|d| d.state)) {
                    (Answer::Next, Some(Offer::Accepted)) => Answer::Arrived,
                    (Answer::Next, Some(Offer::Arrived)) => Answer::Completed,
                    (Answer::Next, _) => Answer::Accept,
                    (a, _) => a,
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

    pub(super) fn note(&mut self, what: String) {
        if let Some(last) = self.trace.last_mut() {
            last.push(' ');
            last.push_str(&what);
        }
    }

    pub(super) fn pick_answer(&self, dispatch: Option<u8>, who: Who) -> Option<(i64, i64)> {
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
    pub(super) fn expect(&mut self, expect: &Expect, status: StatusCode, body: &Value) -> bool {
        let error = body["error"].as_str().unwrap_or_default().to_owned();
        self.note(format!("-> {} {}", status.as_u16(), error));
        match expect {
            Expect::Done => {
                self.check("refusal_matches", status.is_success(), || {
                    format!("the model allows it; the server said {status} {body}")
                });
                status.is_success()
            }
            Expect::Refused(check, want, phrase) => {
                self.check(check, !status.is_success(), || {
                    format!("the model refuses it ({phrase}); the server did it: {body}")
                });
                if !status.is_success() {
                    self.check(
                        "clear_refusal",
                        status == *want && error.contains(phrase.as_str()),
                        || format!("refused with {status} {error:?}, not {want} naming {phrase:?}"),
                    );
                }
                status.is_success()
            }
        }
    }

    pub(super) async fn operator_step(&mut self, age: u8, operator: usize, step: OperatorStep) {
        let Some(id) = self.model.incident_by_age(age) else {
            return;
        };
        let actor = format!("operator:{}", OPERATORS[operator]);
        let (expect, to) = self.model.expect_step(id, &actor, step);
        let take_over = step.take_over;
        let (path, body) = match step.action {
            Action::Claim => ("claim", Value::Null),
            Action::Resolve => ("resolve", json!({ "take_over": take_over })),
            Action::Close => (
                "close",
                json!({ "outcome": "help_given", "take_over": take_over }),
            ),
            Action::Cancel if step.reason => (
                "cancel",
                json!({ "reason": "resident_false_alarm", "confirm": true, "take_over": take_over }),
            ),
            Action::Cancel => ("cancel", json!({ "take_over": take_over })),
            other => unreachable!("no operator step {other}"),
        };
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
            && let Some((to, holds)) = to
        {
            self.check("state_matches", answer["state"] == to.as_str(), || {
                format!("incident {id} is {}, the model says {to}", answer["state"])
            });
            self.model
                .move_incident(id, to, holds.then_some(actor.as_str()));
        }
    }

    pub(super) async fn dispatch(&mut self, age: u8, carer: usize, operator: usize) {
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

    pub(super) async fn answer(&mut self, id: i64, carer: i64, answer: Answer) {
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
}
