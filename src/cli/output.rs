//! Rendering of progress events: colored text for people (info blue,
//! success green, warning yellow, error red; plain when stdout is not a
//! terminal or `NO_COLOR` is set) or NDJSON for machines (`--json`).

use std::io::{IsTerminal, Write};

use crate::controller::event::{Event, Level, Outcome, Phase};

/// How events are printed.
#[derive(Debug, Clone, Copy)]
pub struct Renderer {
    json: bool,
    color: bool,
}

/// Should stdout be colored?
pub fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn paint(level: Level, text: &str, color: bool) -> String {
    if !color {
        return text.to_string();
    }
    let code = match level {
        Level::Info => "34",
        Level::Success => "32",
        Level::Warn => "33",
        Level::Error => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// A one-line error for stderr (red on a terminal).
pub fn error_line(message: &str) -> String {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    paint(Level::Error, &format!("error: {message}"), color)
}

impl Renderer {
    /// Text (colored when [`use_color`]) or NDJSON.
    pub fn new(json: bool) -> Self {
        Renderer {
            json,
            color: !json && use_color(),
        }
    }

    /// Print one event.
    pub fn event(&self, event: &Event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", self.format(event));
        let _ = out.flush();
    }

    /// The text of one event as it is printed.
    pub fn format(&self, event: &Event) -> String {
        if self.json {
            return serde_json::to_string(event).unwrap_or_default();
        }
        // "2026-11-25T19:28:24.123Z" → "19:28:24"
        let time = event.ts.get(11..19).unwrap_or(&event.ts);
        let service = event.service.as_deref().map(|s| format!("[{s}] ")).unwrap_or_default();
        let line = format!("{time} {:<9} {service}{}", event.phase, event.message);
        paint(event.level, &line, self.color)
    }

    /// Print a refusal that happened before any event was streamed, as text
    /// on stderr or, with `--json`, as an error event and a final event.
    pub fn refusal(&self, message: &str, outcome: Outcome) {
        if self.json {
            self.event(&Event::new(Level::Error, Phase::Lock, None, message));
            self.event(&Event::done(outcome, message));
        } else {
            eprintln!("{}", error_line(message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_show_time_phase_service_and_message() {
        let r = Renderer {
            json: false,
            color: false,
        };
        let mut e = Event::new(Level::Success, Phase::Health, Some("web"), "healthy after 12 ms");
        e.ts = "2026-11-25T19:28:24.123Z".into();
        assert_eq!(r.format(&e), "19:28:24 health    [web] healthy after 12 ms");
        let colored = Renderer {
            json: false,
            color: true,
        };
        assert!(colored.format(&e).starts_with("\x1b[32m"));
    }

    #[test]
    fn json_lines_are_the_event_itself() {
        let r = Renderer {
            json: true,
            color: false,
        };
        let e = Event::done(Outcome::Deployed, "ok");
        let back: Event = serde_json::from_str(&r.format(&e)).unwrap();
        assert_eq!(back, e);
    }
}
