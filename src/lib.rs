//! switchctl: zero-downtime blue/green deploys for one host.
//!
//! The data plane is the `switchctl-proxy` crate. This crate holds the
//! control plane: the config file ([`config`]), the drivers that run
//! upstreams ([`driver`]), the deploy state machine ([`controller`]), the
//! daemon that hosts proxy + controller + admin API ([`daemon`], [`admin`],
//! whose wire types are [`api`]; [`metrics`] for Prometheus, [`notify`] for
//! notifications) and hands them over to a successor ([`upgrade`]), and the
//! CLI ([`cli`], with [`probe`] for `check` and [`demo_app`] for `demo`).
//! [`release`] is the vocabulary they share. Dependencies run one way: cli → admin → controller → driver →
//! config (docs/architecture.md has the map).

pub mod acme;
pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod demo_app;
pub mod driver;
mod memory;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod release;
pub mod tls;
pub mod upgrade;
