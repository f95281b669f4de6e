//! The ways of reaching a contact.

use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;

use super::{Channel, Notice, NotifyError, SendFuture};
use crate::dispatch::Dispatcher;
use pingantong_store::secret::Secret;

/// A family app subscribed to `<prefix>/v1/contacts/<contact id>/notices`
/// (QoS 1, so a phone that was offline gets it from its persistent session).
pub struct MqttChannel {
    dispatcher: Dispatcher,
}

impl MqttChannel {
    pub fn new(dispatcher: Dispatcher) -> Self {
        Self { dispatcher }
    }
}

pub fn notice_topic(prefix: &str, contact_id: i64) -> String {
    format!("{prefix}/v1/contacts/{contact_id}/notices")
}

impl Channel for MqttChannel {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn send<'a>(
        &'a self,
        contact_id: i64,
        _address: &'a str,
        notice: &'a Notice,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(notice).expect("notice serialises");
            let topic = notice_topic(self.dispatcher.prefix(), contact_id);
            self.dispatcher
                .publish_raw(topic, body)
                .await
                .map_err(|e| NotifyError::Transient(e.to_string()))
        })
    }
}

/// A POST of the notice as JSON to the contact's URL. With a secret set, the
/// body is signed: `X-PingAnTong-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
pub struct WebhookChannel {
    client: reqwest::Client,
    secret: Option<Secret>,
}

impl WebhookChannel {
    pub fn new(secret: Option<Secret>, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("pingantong/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, secret })
    }
}

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

impl Channel for WebhookChannel {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(
        &'a self,
        _contact_id: i64,
        address: &'a str,
        notice: &'a Notice,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let url = reqwest::Url::parse(address)
                .map_err(|e| NotifyError::Permanent(format!("webhook URL {address:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(NotifyError::Permanent(format!(
                    "webhook URL {address:?} is not http(s)"
                )));
            }
            let body = serde_json::to_vec(notice).expect("notice serialises");
            let mut request = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json");
            if let Some(secret) = &self.secret {
                request = request.header(
                    "X-PingAnTong-Signature",
                    sign(secret.expose().as_bytes(), &body),
                );
            }
            let response = request
                .body(body)
                .send()
                .await
                .map_err(|e| NotifyError::Transient(format!("webhook: {e}")))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_client_error()
                && status != reqwest::StatusCode::REQUEST_TIMEOUT
                && status != reqwest::StatusCode::TOO_MANY_REQUESTS
            {
                Err(NotifyError::Permanent(format!("webhook answered {status}")))
            } else {
                Err(NotifyError::Transient(format!("webhook answered {status}")))
            }
        })
    }
}

/// E-mail through the configured SMTP server.
pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl EmailChannel {
    /// `url`: `smtp://host:port` (plain, for a relay on the same host or
    /// network), `smtp://host:587?tls=required` (STARTTLS) or `smtps://host`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| format!("smtp_url: {e}"))?
            .timeout(Some(timeout))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("mail_from {from:?}: {e}"))?;
        Ok(Self { transport, from })
    }
}

impl Channel for EmailChannel {
    fn name(&self) -> &'static str {
        "email"
    }

    fn send<'a>(
        &'a self,
        _contact_id: i64,
        address: &'a str,
        notice: &'a Notice,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let to: Mailbox = address
                .parse()
                .map_err(|e| NotifyError::Permanent(format!("e-mail address {address:?}: {e}")))?;
            let subject = format!(
                "平安通报警 / Ping An Tong alarm: {} ({})",
                notice.resident, notice.kind
            );
            let body = format!(
                "{}\n\n{}\n\n#{} {}\n",
                notice.message_zh, notice.message_en, notice.incident_id, notice.kind
            );
            let message = Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(subject)
                .header(ContentType::TEXT_PLAIN)
                .body(body)
                .map_err(|e| NotifyError::Permanent(format!("e-mail: {e}")))?;
            match self.transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => {
                    Err(NotifyError::Permanent(format!("mail server refused: {e}")))
                }
                Err(e) => Err(NotifyError::Transient(format!("mail server: {e}"))),
            }
        })
    }
}
