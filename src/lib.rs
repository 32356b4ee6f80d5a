//! usher: a reverse-proxy sidecar that decides, for every request, who is
//! knocking — and tells the upstream in headers.
//!
//! The modules follow the flow of one request:
//! [`facts`] → [`identity`] → [`signals`] → [`rules`] → [`verdict`], run by
//! [`classify`]; [`proxy`] carries the request upstream and back; [`server`]
//! accepts connections; [`admin`] and [`metrics`] report; [`config`] and
//! [`cli`] turn files and flags into a validated configuration, which
//! [`reload`] replaces while usher runs.

pub mod access_log;
pub mod admin;
pub mod classify;
pub mod cli;
pub mod config;
pub mod crawlers;
pub mod demo;
pub mod explain;
pub mod facts;
pub mod forwarded;
pub mod health;
pub mod identity;
pub mod limits;
pub mod memo_set;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod replay;
pub mod rules;
pub mod server;
pub mod signals;
pub mod state;
pub mod verdict;
pub mod workers;
