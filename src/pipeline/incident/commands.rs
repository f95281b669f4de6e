//! What people ask of the incident stage from outside it (the HTTP API): a
//! carer's answer, an operator's offer to a carer of their choosing. They go
//! through the stage's own loop, so an HTTP answer and an MQTT one for the
//! same dispatch are applied one after the other, never interleaved.

use tokio::sync::{mpsc, oneshot};

use super::IncidentStage;
use super::replies::ReplyProblem;
use pingantong_store::{CarerAnswer, NewDispatch, OfferError, StoreError};
use pingantong_telemetry::events;

pub enum Command {
    Answer {
        carer: i64,
        dispatch: i64,
        answer: CarerAnswer,
        reason: Option<String>,
        outcome: Option<String>,
        done: oneshot::Sender<Result<(), CommandError>>,
    },
    Offer {
        incident: i64,
        carer: i64,
        /// `operator:<name>`.
        by: String,
        done: oneshot::Sender<Result<i64, CommandError>>,
    },
    /// An incident ended elsewhere (the console): tell the carers whose
    /// offers it took back now rather than at the next sweep.
    SendWithdrawals,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("the incident stage is not running")]
    Stopped,
    #[error(transparent)]
    Reply(#[from] ReplyProblem),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Cheap to clone; held by the HTTP API.
#[derive(Clone)]
pub struct StageHandle(mpsc::Sender<Command>);

impl StageHandle {
    pub fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(256);
        (Self(tx), rx)
    }

    pub async fn answer(
        &self,
        carer: i64,
        dispatch: i64,
        answer: CarerAnswer,
        reason: Option<String>,
        outcome: Option<String>,
    ) -> Result<(), CommandError> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Answer {
                carer,
                dispatch,
                answer,
                reason,
                outcome,
                done,
            })
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }

    /// Withdrawals are owed in the database: send them soon. A full queue
    /// leaves them to the sweep.
    pub fn send_withdrawals(&self) {
        let _ = self.0.try_send(Command::SendWithdrawals);
    }

    /// Offer `incident` to `carer`; the new dispatch's id.
    pub async fn offer(&self, incident: i64, carer: i64, by: String) -> Result<i64, CommandError> {
        let (done, rx) = oneshot::channel();
        self.0
            .send(Command::Offer {
                incident,
                carer,
                by,
                done,
            })
            .await
            .map_err(|_| CommandError::Stopped)?;
        rx.await.map_err(|_| CommandError::Stopped)?
    }
}

impl IncidentStage {
    pub(super) async fn command(&self, command: Command) {
        match command {
            Command::Answer {
                carer,
                dispatch,
                answer,
                reason,
                outcome,
                done,
            } => {
                let result = self
                    .answer(
                        carer,
                        dispatch,
                        answer,
                        reason.as_deref(),
                        outcome.as_deref(),
                    )
                    .await
                    .map_err(CommandError::from);
                let _ = done.send(result);
            }
            Command::Offer {
                incident,
                carer,
                by,
                done,
            } => {
                let _ = done.send(self.offer_to(incident, carer, &by).await);
            }
            Command::SendWithdrawals => {
                if let Err(e) = self.send_withdrawals().await {
                    events::StageFailed {
                        stage: "withdrawal_publish",
                        error: &e,
                    }
                    .emit();
                }
            }
        }
    }

    async fn offer_to(&self, incident: i64, carer: i64, by: &str) -> Result<i64, CommandError> {
        let summary =
            self.db.incident_summary(incident).await?.ok_or_else(|| {
                CommandError::Refused(format!("incident {incident} does not exist"))
            })?;
        let open = summary.state.is_open();
        if !open {
            return Err(CommandError::Refused(format!(
                "incident {incident} is {}",
                summary.state
            )));
        }
        let c = self
            .db
            .carer(carer)
            .await?
            .ok_or_else(|| CommandError::Refused(format!("carer {carer} does not exist")))?;
        if !c.on_duty {
            return Err(CommandError::Refused(format!("carer {carer} is off duty")));
        }
        let home = match summary.client_id {
            Some(id) => self
                .directory
                .client(id)
                .await?
                .and_then(|p| p.lat.zip(p.lon)),
            None => None,
        };
        let from = self.db.incident_position(incident).await?.or(home);
        let choice = NewDispatch {
            carer_id: c.id,
            provider_id: c.provider_id,
            distance_m: from.map(|h| crate::routing::distance_m(h, (c.lat, c.lon))),
            fallback: false,
        };
        let due = self.now() + self.escalation(&summary.kind).offer_after_ms;
        // A carer who holds a live offer for the incident is refused rather
        // than sent it again: the operator learns that nothing new was sent
        // and to whom the job already went.
        let dispatch = self
            .db
            .add_offer(incident, &choice, due, by, "chosen by the operator")
            .await
            .map_err(|e| match e {
                OfferError::Store(e) => CommandError::Store(e),
                refused => CommandError::Refused(refused.to_string()),
            })?;
        if let Err(e) = self.dispatcher.publish(dispatch).await {
            // Stored: the recovery sweep sends it when the broker is back.
            events::StageFailed {
                stage: "dispatch_publish",
                error: &e,
            }
            .emit();
        }
        Ok(dispatch)
    }
}
