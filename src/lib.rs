//! Switchboard: an omnichannel inquiry router.
//!
//! The modules follow the data flow: [`channels`] normalize provider
//! messages into [`inquiry::NewMessage`]s, the [`pipeline`] commits them to
//! the [`store`] with their acknowledgement, and the [`outbox`] delivers
//! that acknowledgement. [`api`] is the HTTP face and [`daemon`] wires it
//! all and owns the lifecycle.

pub mod alloc;
pub mod api;
pub mod channels;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dry_run;
pub mod inquiry;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod routing;
pub mod rule_fixtures;
pub mod rules;
pub mod store;
pub mod templates;
