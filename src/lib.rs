//! Ping An Tong (平安通): emergency call and alarm dispatch for elderly people living alone.
//!
//! The pipeline, in the order an alarm travels: [`ingest`] (listeners) →
//! [`store`] (group commit, then the device's ACK) → [`incident`] (match the
//! person, open or fold an incident) → [`routing`] (choose a carer) →
//! [`dispatch`] (offer over MQTT), with [`notify`] telling the family. [`rules`] say what each
//! kind of event gets; [`directory`] caches who is who for them. [`sla`] measures
//! the service against the city's targets and builds its monthly reports.

pub mod anchor;
pub mod api;
pub mod app;
pub mod broker;
pub mod config;
pub mod demo;
pub mod directory;
pub mod dispatch;
pub mod domain;
pub mod housekeeping;
pub mod incident;
pub mod ingest;
pub mod mqtt;
pub mod notify;
pub mod open_files;
pub mod routing;
pub mod rules;
pub mod secret;
pub mod sla;
pub mod store;
pub mod supervision;
pub mod telemetry;
pub mod vault;

pub use app::Application;
pub use config::Settings;
