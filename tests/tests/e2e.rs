//! End-to-end tests against the real rotor server. One test binary, several modules.

mod e2e {
    pub mod admin;
    pub mod api;
    pub mod auth;
    pub mod bad_input;
    pub mod channel_features;
    pub mod cli;
    pub mod client;
    pub mod cluster;
    pub mod dashboards;
    pub mod expiry;
    pub mod expiry_scale;
    pub mod faults;
    pub mod jwks;
    pub mod limits;
    pub mod metrics;
    pub mod postgres;
    pub mod protobuf;
    pub mod proxy;
    pub mod revocation;
    pub mod sdk;
    pub mod secrets;
    pub mod tls;
    pub mod transports;
    pub mod uni;
}
