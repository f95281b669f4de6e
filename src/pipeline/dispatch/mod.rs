//! Dispatch: offers to carers over MQTT, one topic per carer, QoS 1.

use rumqttc::{AsyncClient, Publish, QoS};

use pingantong_store::{Db, DispatchOffer, StoreError, Withdrawal};
use pingantong_telemetry::events;

pub use crate::mqtt::{MqttEndpoint, MqttStatus};

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("MQTT is not connected; the offer stays queued in the database")]
    MqttDown,
    #[error("MQTT client refused the publish: {0}")]
    Publish(#[from] rumqttc::ClientError),
    #[error("dispatch {0} has no offer to send (no client for the incident)")]
    NoOffer(i64),
}

/// Topic a carer's phone subscribes to for its offers.
pub fn offer_topic(prefix: &str, carer_id: i64) -> String {
    format!("{prefix}/v1/carers/{carer_id}/dispatch")
}

#[derive(Clone)]
pub struct Dispatcher {
    db: Db,
    client: AsyncClient,
    status: MqttStatus,
    prefix: String,
}

impl Dispatcher {
    pub fn new(db: Db, client: AsyncClient, status: MqttStatus, prefix: String) -> Self {
        Self {
            db,
            client,
            status,
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Let the broker forget a message we have handled.
    pub async fn ack(&self, publish: &Publish) {
        let _ = self.client.ack(publish).await;
    }

    /// Alert the supervisors (`<prefix>/v1/supervisors/alerts`).
    pub async fn alert_supervisors(
        &self,
        incident: i64,
        kind: &str,
        why: &str,
    ) -> Result<(), DispatchError> {
        let body = serde_json::json!({
            "v": 1,
            "incident_id": incident,
            "kind": kind,
            "detail": why,
            "at": pingantong_store::now_ms(),
        });
        self.client
            .publish(
                format!("{}/v1/supervisors/alerts", self.prefix),
                QoS::AtLeastOnce,
                false,
                body.to_string(),
            )
            .await?;
        Ok(())
    }

    /// Publish a message of the server's own (QoS 1) when the broker is
    /// connected; while it is not, the caller keeps the message owed.
    pub async fn publish_raw(&self, topic: String, body: Vec<u8>) -> Result<(), DispatchError> {
        if !self.status.is_up() {
            return Err(DispatchError::MqttDown);
        }
        self.client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await?;
        Ok(())
    }

    /// Send the offer of one stored dispatch. Only a publish handed to a
    /// connected client counts as sent; otherwise the offer stays unpublished
    /// and the recovery sweep sends it when the broker is back.
    pub async fn publish(&self, dispatch_id: i64) -> Result<(), DispatchError> {
        if !self.status.is_up() {
            return Err(DispatchError::MqttDown);
        }
        let offer = self
            .db
            .dispatch_offer(dispatch_id)
            .await?
            .ok_or(DispatchError::NoOffer(dispatch_id))?;
        self.publish_offer(&offer).await?;
        self.db.mark_dispatches_published(&[dispatch_id]).await?;
        Ok(())
    }

    /// Send an offer already read (or just written); the caller records it as
    /// published.
    pub async fn publish_offer(&self, offer: &DispatchOffer) -> Result<(), DispatchError> {
        let mut payload = serde_json::to_value(offer).expect("offer serialises");
        payload["v"] = serde_json::json!(1);
        payload["type"] = serde_json::json!("offer");
        self.to_carer(offer.carer_id, payload).await?;
        events::DispatchPublished {
            dispatch: offer.dispatch_id,
            carer: offer.carer_id,
        }
        .emit();
        Ok(())
    }

    /// Tell the carer who accepted what the offer left out: the resident's
    /// medical notes, medications, allergies and the key-safe code. Carers who
    /// were only asked never get them; a phone that misses this message reads
    /// them from its job list.
    pub async fn publish_details(&self, offer: &DispatchOffer) -> Result<(), DispatchError> {
        let payload = serde_json::json!({
            "v": 1,
            "type": "details",
            "dispatch_id": offer.dispatch_id,
            "incident_id": offer.incident_id,
            "carer_id": offer.carer_id,
            "medical_notes": offer.medical_notes,
            "medications": offer.medications,
            "allergies": offer.allergies,
            "key_safe": offer.key_safe,
        });
        self.to_carer(offer.carer_id, payload).await
    }

    /// Tell a carer an offer is taken back, on the topic the offer came by
    /// (protocol/MQTT.md): their phone drops the job.
    pub async fn publish_withdrawal(&self, w: &Withdrawal) -> Result<(), DispatchError> {
        let reason = w.reason();
        let payload = serde_json::json!({
            "v": 1,
            "type": "withdrawn",
            "dispatch_id": w.dispatch_id,
            "incident_id": w.incident_id,
            "carer_id": w.carer_id,
            "reason": reason,
            "withdrawn_at": w.withdrawn_at,
        });
        self.to_carer(w.carer_id, payload).await?;
        events::OfferWithdrawn {
            dispatch: w.dispatch_id,
            carer: w.carer_id,
            incident: w.incident_id,
            reason: &reason,
        }
        .emit();
        Ok(())
    }

    /// One message on a carer's dispatch topic (QoS 1). Only a publish handed
    /// to a connected client counts as sent.
    async fn to_carer(&self, carer: i64, payload: serde_json::Value) -> Result<(), DispatchError> {
        if !self.status.is_up() {
            return Err(DispatchError::MqttDown);
        }
        self.client
            .publish(
                offer_topic(&self.prefix, carer),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await?;
        Ok(())
    }
}
