//! The release vocabulary every part shares: the two [`Color`]s a release
//! can run in, a [`Release`] (a tag and one upstream per service), and the
//! [`Handle`] a driver finds an upstream by. A leaf: it imports no other part
//! of switchctl, so the controller, the drivers and the wire types can all
//! speak it without depending on each other.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One of the two slots a release can run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// blue
    Blue,
    /// green
    Green,
}

impl Color {
    /// The other color.
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    /// The color named `s` (`"blue"` or `"green"`).
    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }

    /// `"blue"` or `"green"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a driver finds an upstream again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Handle {
    /// A process group led by `pid`; `start_time` (from /proc) guards
    /// against the pid having been reused.
    Process {
        /// process id (also the process group id)
        pid: i32,
        /// clock ticks since boot when it started
        start_time: u64,
    },
    /// A Docker container.
    Container {
        /// container id
        id: String,
    },
}

/// One service of one color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamRecord {
    /// Where the proxy sends its requests.
    pub addr: SocketAddr,
    /// How to find it again.
    pub handle: Handle,
}

/// A release running in one color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The deployed tag.
    pub tag: String,
    /// Service name → upstream.
    pub services: BTreeMap<String, UpstreamRecord>,
}
