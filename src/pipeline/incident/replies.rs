//! Carers' replies to offers (accept, decline, arrived, completed), applied to
//! the dispatch and the incident; a decline offers the job to the next carer.

use rumqttc::Publish;
use serde::Deserialize;

use super::IncidentStage;
use crate::routing;
use pingantong_domain::Action;
use pingantong_store::{
    AuditEntry, CarerAnswer, OfferError, ReplyError, StoreError, Transition, TransitionError,
};
use pingantong_telemetry::events;

/// Largest reply payload accepted.
pub const MAX_REPLY: usize = 4096;

/// A carer's reply as published (schema v1, protocol/MQTT.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarerReply {
    pub v: u32,
    pub dispatch_id: i64,
    pub action: String,
    pub reason: Option<String>,
    pub outcome: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplyProblem {
    #[error("not a carer reply topic: {0}")]
    Topic(String),
    #[error("reply is {0} bytes, the limit is {MAX_REPLY}")]
    TooLarge(usize),
    #[error("not a v1 carer reply: {0}")]
    Json(#[from] serde_json::Error),
    #[error("schema version {0} is not supported")]
    Version(u32),
    #[error("unknown action {0:?} (accept, decline, arrived, completed)")]
    Action(String),
    #[error(transparent)]
    Refused(ReplyError),
    /// The database could not be reached: the reply stays with the broker.
    #[error(transparent)]
    Store(StoreError),
}

impl ReplyProblem {
    /// Worth delivering again later (the database was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, ReplyProblem::Store(_))
    }

    /// Why, in one word, for the log and the refusals metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplyProblem::Topic(_) => "topic",
            ReplyProblem::TooLarge(_) => "too_large",
            ReplyProblem::Json(_) => "malformed",
            ReplyProblem::Version(_) => "version",
            ReplyProblem::Action(_) => "unknown_action",
            ReplyProblem::Refused(r) => r.kind(),
            ReplyProblem::Store(_) => "store",
        }
    }
}

impl From<ReplyError> for ReplyProblem {
    fn from(e: ReplyError) -> Self {
        match e {
            ReplyError::Store(s) => ReplyProblem::Store(s),
            other => ReplyProblem::Refused(other),
        }
    }
}

impl From<StoreError> for ReplyProblem {
    fn from(e: StoreError) -> Self {
        ReplyProblem::Store(e)
    }
}

impl IncidentStage {
    /// Apply one reply; acknowledge it to the broker unless the failure is transient.
    /// A reply the database could not take is tried again (with backoff) until
    /// it can: left unacknowledged it would stall the broker's in-flight window.
    pub(super) async fn carer_reply_logged(&self, publish: Publish) {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match self.carer_reply(&publish).await {
                Ok(()) => break,
                Err(e) if e.is_transient() => {
                    events::StageFailed {
                        stage: "carer_reply",
                        error: &e,
                    }
                    .emit();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                }
                Err(e) => {
                    events::ReplyRefused {
                        reason: e.kind(),
                        error: &e,
                    }
                    .emit();
                    break;
                }
            }
        }
        self.dispatcher.ack(&publish).await;
    }

    async fn carer_reply(&self, publish: &Publish) -> Result<(), ReplyProblem> {
        let carer: i64 = publish
            .topic
            .strip_prefix(self.dispatcher.prefix())
            .and_then(|t| t.strip_prefix("/v1/carers/"))
            .and_then(|t| t.strip_suffix("/reply"))
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ReplyProblem::Topic(publish.topic.clone()))?;
        if publish.payload.len() > MAX_REPLY {
            return Err(ReplyProblem::TooLarge(publish.payload.len()));
        }
        let reply: CarerReply = serde_json::from_slice(&publish.payload)?;
        if reply.v != 1 {
            return Err(ReplyProblem::Version(reply.v));
        }
        let answer = CarerAnswer::parse(&reply.action)
            .ok_or_else(|| ReplyProblem::Action(reply.action.clone()))?;
        self.answer(
            carer,
            reply.dispatch_id,
            answer,
            reply.reason.as_deref(),
            reply.outcome.as_deref(),
        )
        .await
    }

    /// A carer's answer, from MQTT or HTTP: recorded on the dispatch, then on
    /// the incident (a decline asks the next carer).
    pub(super) async fn answer(
        &self,
        carer: i64,
        dispatch: i64,
        answer: CarerAnswer,
        reason: Option<&str>,
        outcome: Option<&str>,
    ) -> Result<(), ReplyProblem> {
        let detail = reason.or(outcome).unwrap_or("");
        let (incident, fresh) = self
            .db
            .apply_carer_answer(dispatch, carer, answer, detail)
            .await?;
        let actor = format!("carer:{carer}");
        if answer == CarerAnswer::Accept && fresh {
            self.send_details(dispatch).await;
        }
        let action = match answer {
            CarerAnswer::Accept => Action::CarerAccept,
            CarerAnswer::Arrived => Action::CarerArrive,
            CarerAnswer::Completed => Action::Resolve,
            CarerAnswer::Decline => {
                if fresh {
                    self.offer_next(incident, "after a decline").await?;
                }
                return Ok(());
            }
        };
        let step = Transition {
            incident_id: incident,
            action,
            actor: &actor,
            detail,
            outcome,
            merged_into: None,
            take_over: false,
        };
        let action_name = format!("incident_{}", action.as_str());
        let subject = format!("incident:{incident}");
        let audit = AuditEntry {
            actor: &actor,
            action: &action_name,
            subject: &subject,
            detail,
        };
        match self.db.transition_audited(&step, &audit).await {
            Ok(to) => {
                // A job completed resolves the incident: offers still out to
                // other carers are taken back.
                // The answer stands either way: what is not sent now, the
                // sweep sends.
                if !to.is_open()
                    && let Err(e) = self.send_withdrawals().await
                {
                    events::StageFailed {
                        stage: "withdrawal_publish",
                        error: &e,
                    }
                    .emit();
                }
                Ok(())
            }
            // The incident moved on meanwhile (an operator resolved or
            // cancelled it): the carer's news is on the timeline already.
            Err(TransitionError::Illegal(_)) => Ok(()),
            Err(TransitionError::Store(e)) => Err(ReplyProblem::Store(e)),
            Err(e) => Err(ReplyProblem::Store(StoreError::CommitFailed(e.to_string()))),
        }
    }

    /// The resident's health details to the carer who just accepted. Sent
    /// after the accept is recorded; if the broker cannot take it now, the
    /// carer's job list has them.
    async fn send_details(&self, dispatch: i64) {
        let sent = match self.db.dispatch_offer(dispatch).await {
            Ok(Some(offer)) => self
                .dispatcher
                .publish_details(&offer)
                .await
                .map_err(|e| e.to_string()),
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = sent {
            events::StageFailed {
                stage: "details_publish",
                error: &e,
            }
            .emit();
        }
    }

    /// After a decline or a timeout: the next nearest available carer who has
    /// not been asked yet; the supervisors hear of it when there is nobody left.
    pub(super) async fn offer_next(&self, incident: i64, why: &str) -> Result<(), StoreError> {
        // An incident that ended meanwhile is offered to nobody (the store
        // refuses the offer too, under the incident's lock).
        let open = self
            .db
            .incident_state(incident)
            .await?
            .is_some_and(|s| s.is_open());
        if !open {
            return Ok(());
        }
        let Some(client_id) = self.db.incident_client(incident).await? else {
            return Ok(());
        };
        let Some(client) = self.directory.client(client_id).await? else {
            return Ok(());
        };
        let declined = self.db.carers_passed_over(incident).await?;
        let mut candidates = self
            .db
            .carer_candidates(&client.district, &client.street)
            .await?;
        for c in &mut candidates {
            if c.carer_id.is_some_and(|id| declined.contains(&id)) {
                // Keep the provider (its contract order still counts), drop the carer.
                c.carer_id = None;
            }
        }
        // Ranked from where the person was last reported, else from home.
        let from = self
            .db
            .incident_position(incident)
            .await?
            .or(client.lat.zip(client.lon));
        match routing::choose(from, &candidates) {
            Some(choice) => {
                let due = self.now() + self.escalation_of(incident).await?.offer_after_ms;
                let dispatch = match self
                    .db
                    .add_offer(incident, &choice, due, "system", why)
                    .await
                {
                    Ok(id) => id,
                    Err(OfferError::Store(e)) => return Err(e),
                    // Ended meanwhile, or the carer holds an offer already:
                    // nothing more to ask.
                    Err(_) => return Ok(()),
                };
                if let Err(e) = self.dispatcher.publish(dispatch).await {
                    events::StageFailed {
                        stage: "dispatch_publish",
                        error: &e,
                    }
                    .emit();
                }
            }
            None => {
                events::NoCarerAvailable { incident }.emit();
                let why = format!("no carer left to ask ({why})");
                self.alert(incident, "no_carer", &why).await?;
            }
        }
        Ok(())
    }
}
