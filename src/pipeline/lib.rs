//! The alarm path, in the order an alarm travels: [`ingest`] (listeners) →
//! the store's writer (group commit, then the device's ACK) → [`incident`]
//! (match the person, open or fold an incident) → [`routing`] (choose a
//! carer) → [`dispatch`] (offer over MQTT), with [`notify`] telling the
//! family and [`supervision`] watching for silent devices. [`directory`]
//! caches who is who for them; [`mqtt`] is the server's one broker session and
//! [`broker`] the embedded broker with its gate. [`anchor`] seals the timeline
//! into the audit chain; [`housekeeping`] refreshes data keys and purges what
//! retention no longer keeps.
//!
//! This crate stands on the store, the domain and telemetry; it never imports
//! the API or the server's configuration: each stage takes its own settings.

pub mod anchor;
pub mod broker;
pub mod cluster;
pub mod directory;
pub mod dispatch;
pub mod housekeeping;
pub mod incident;
pub mod ingest;
pub mod mqtt;
pub mod notify;
pub mod open_files;
pub mod routing;
pub mod supervision;
