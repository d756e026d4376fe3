//! switchctl: zero-downtime blue/green deploys for one host.
//!
//! The data plane is the `switchctl-proxy` crate. This crate holds the
//! control plane: the config file ([`config`]), the drivers that run
//! upstreams ([`driver`]), the deploy state machine ([`controller`]), the
//! daemon that hosts proxy + controller + admin API ([`daemon`], [`admin`]),
//! and the CLI ([`cli`]).

pub mod admin;
pub mod cli;
pub mod compose;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod driver;
pub mod notify;
