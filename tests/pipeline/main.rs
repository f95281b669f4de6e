//! End-to-end tests of the alarm path over real sockets: native TCP in,
//! SQLite or PostgreSQL underneath, the embedded broker or Mosquitto out.

mod at_rest;
mod auth;
mod browser;
mod cluster;
mod console;
mod crash;
mod dedup;
mod devices;
mod escalation;
mod health;
mod helpers;
mod incidents;
mod model;
mod mqtt;
mod mqtt_security;
mod native;
mod notify;
mod offers;
mod outage;
mod registry;
mod reports;
mod supervision;
