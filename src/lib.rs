//! Ping An Tong (平安通): emergency call and alarm dispatch for elderly people living alone.
//!
//! The pipeline, in the order an alarm travels: [`ingest`] (listeners) →
//! [`store`] (group commit, then the device's ACK) → [`incident`] (match the
//! person, open or fold an incident) → [`routing`] (choose a carer) →
//! [`dispatch`] (offer over MQTT), with [`notify`] telling the family. [`rules`] say what each
//! kind of event gets; [`directory`] caches who is who for them. [`sla`] measures
//! the service against the city's targets and builds its monthly reports.

pub mod app;
pub mod cli;
pub mod config;
pub mod listeners;
pub mod stages;

// The crates below the server, under the names the server's modules use.
pub use pingantong_api as api;
pub use pingantong_domain::{self as domain, rules};
pub use pingantong_pipeline::{
    anchor, broker, cluster, directory, dispatch, housekeeping, incident, ingest, mqtt, notify,
    open_files, routing, supervision,
};
pub use pingantong_sla as sla;
pub use pingantong_store::{self as store, secret, vault};
pub use pingantong_telemetry as telemetry;

pub use app::Application;
pub use config::Settings;
