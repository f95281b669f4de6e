//! After every step: the offers the server made on its own, and the invariants
//! read back from the database against the model.

use super::*;

impl Sut {
    /// Offers the server made on its own since the model last looked: each
    /// must be on an open incident and fresh; the model learns them.
    pub(super) fn learn_offers(&mut self, step: &Step, seen: &Seen) {
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
                    // One the server should not have made is, to the model,
                    // withdrawn: a carer's answer to it must be refused.
                    state: if open {
                        Offer::parse(&state)
                    } else {
                        Offer::Withdrawn
                    },
                    due_at: self.clock.now() + OFFER_AFTER_MS,
                },
            );
        }
    }

    /// Everything the database says, against the model and the invariants;
    /// where a check is only reported, the model adopts what the server did.
    pub(super) fn compare(&mut self, seen: &Seen) {
        let excused = std::mem::take(&mut self.excused);
        // No offer or job on an ended incident that its end takes back.
        for (id, (incident, _, state)) in &seen.dispatches {
            let incident_state = State::parse(&seen.incidents[incident].0).expect("a known state");
            let left = withdrawn_by(incident_state).contains(&Offer::parse(state));
            self.check("withdrawn_on_end", !left, || {
                format!(
                    "dispatch {id} is {state} on incident {incident}, which is {incident_state}"
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
        // A carer is busy exactly while on a job (accepted or arrived): a
        // carer marked free while on the way would be offered another; one
        // marked busy with no job is never offered anything again.
        for (carer, busy) in &seen.busy {
            let jobs: Vec<i64> = seen
                .dispatches
                .iter()
                .filter(|(_, d)| d.1 == *carer && matches!(d.2.as_str(), "accepted" | "arrived"))
                .map(|(id, _)| *id)
                .collect();
            self.check("busy_while_on_a_job", *busy != jobs.is_empty(), || {
                format!("carer {carer} is busy: {busy}, with jobs {jobs:?}")
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
                excused || (state == want.state.as_str() && claimed_by == want.claimed_by),
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
            self.check(
                check,
                (excused && check == "state_matches") || state == want,
                || format!("dispatch {id} is {state:?}; the model says {want:?}"),
            );
            // A job the server left live on an ended incident stays
            // withdrawn to the model: a late answer to it must still be refused.
            if !(want == Offer::Withdrawn && state.is_live()) {
                self.model.dispatches.get_mut(&id).expect("known").state = state;
            }
        }
        self.excused = false;
    }

    /// Every offer or job the model says was withdrawn is told to its
    /// carer's phone (`"type": "withdrawn"` on the carer's dispatch topic),
    /// within a few seconds: the message is owed until the broker has it.
    pub(super) async fn withdrawals_told(&mut self) {
        let owed: Vec<(i64, i64)> = self
            .model
            .dispatches
            .iter()
            .filter(|(_, d)| d.state == Offer::Withdrawn)
            .map(|(id, d)| (*id, d.carer))
            .collect();
        let prefix = self.settings.mqtt.topic_prefix.clone();
        let missing = || {
            let phones = self.phones.as_ref().expect("the phones");
            owed.iter()
                .filter(|(id, carer)| {
                    !phones
                        .on(&format!("{prefix}/v1/carers/{carer}/dispatch"))
                        .iter()
                        .any(|m| m["type"] == "withdrawn" && m["dispatch_id"] == *id)
                })
                .map(|(id, _)| *id)
                .collect::<Vec<i64>>()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut left = missing();
        while !left.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
            left = missing();
        }
        self.check("withdrawal_told", left.is_empty(), || {
            format!("no withdrawal reached the phones for dispatches {left:?} within 5 s")
        });
    }
}
