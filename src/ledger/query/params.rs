//! What a usage query asks for: its window (`1h`, `24h`, `7d`, `30d`) with the span and step
//! of its points, what its series are grouped by, and its page, read from the query string.

use super::super::book::{HOUR_MS, MINUTE_MS, Series};

/// Most points (series x points per series) in one answer: about 9 MB of JSON. 300 models
/// over 24 h were 432,000 points, 75 MB, built whole in memory per request.
pub const MAX_POINTS: usize = 50_000;

/// How far back, and the width of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        Some(match s {
            "1h" => Window::Hour,
            "24h" => Window::Day,
            "7d" => Window::Week,
            "30d" => Window::Month,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    /// (span, step) in ms. 1 h and 24 h come from minute buckets (60 and 1,440 points), 7 d
    /// and 30 d from hour buckets (168 and 720 points).
    pub fn span_step(self) -> (i64, i64) {
        match self {
            Window::Hour => (HOUR_MS, MINUTE_MS),
            Window::Day => (24 * HOUR_MS, MINUTE_MS),
            Window::Week => (7 * 24 * HOUR_MS, HOUR_MS),
            Window::Month => (30 * 24 * HOUR_MS, HOUR_MS),
        }
    }

    /// Points in one series.
    pub fn points(self) -> usize {
        let (span, step) = self.span_step();
        (span / step) as usize
    }

    /// Most series in one answer (at most [`MAX_POINTS`] points).
    pub fn max_series(self) -> usize {
        MAX_POINTS / self.points()
    }
}

/// What a series is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    /// The model asked for: a fallback's requests under the model they asked for.
    AskedModel,
    Key,
    Project,
    Client,
    None,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        Some(match s {
            "model" => GroupBy::Model,
            "asked_model" => GroupBy::AskedModel,
            "key" => GroupBy::Key,
            "project" => GroupBy::Project,
            "client" => GroupBy::Client,
            "none" => GroupBy::None,
            _ => return None,
        })
    }

    pub(super) fn of(self, s: &Series) -> u32 {
        match self {
            GroupBy::Model => s.model,
            GroupBy::AskedModel if s.asked != super::super::names::NONE_ID => s.asked,
            GroupBy::AskedModel => s.model,
            GroupBy::Key => s.key,
            GroupBy::Project => s.project,
            GroupBy::Client => s.client,
            GroupBy::None => 0,
        }
    }

    pub(super) fn name(self) -> Option<&'static str> {
        match self {
            GroupBy::Model => Some("model"),
            GroupBy::AskedModel => Some("asked_model"),
            GroupBy::Key => Some("key"),
            GroupBy::Project => Some("project"),
            GroupBy::Client => Some("client"),
            GroupBy::None => None,
        }
    }
}

/// A query of `/api/ai/usage/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub window: Window,
    pub group_by: GroupBy,
    /// Series in this answer (`None`: as many as fit, [`Window::max_series`]).
    pub limit: Option<usize>,
    /// Series skipped, in the answer's order.
    pub offset: usize,
    /// Only this client's usage (series and totals): set for a client key, which may not see
    /// other clients'. `None`: everyone's (the admin token).
    pub client: Option<std::sync::Arc<str>>,
}

impl Query {
    /// From the query string; `ignore` names parameters that are not the query's (the
    /// credential). A bad value or an unknown parameter is an error saying which.
    pub fn parse(query: Option<&str>, ignore: &[&str]) -> Result<Query, String> {
        let mut q = Query {
            window: Window::Hour,
            group_by: GroupBy::Model,
            limit: None,
            offset: 0,
            client: None,
        };
        let whole = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a whole number (got {:?})", shorten(value)))
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "window" => {
                    q.window = Window::parse(value).ok_or_else(|| {
                        format!(
                            "window must be one of 1h, 24h, 7d, 30d (got {:?})",
                            shorten(value)
                        )
                    })?
                }
                "group_by" => {
                    q.group_by = GroupBy::parse(value).ok_or_else(|| {
                        format!(
                            "group_by must be one of model, asked_model, key, project, client, none (got {:?})",
                            shorten(value)
                        )
                    })?
                }
                "limit" => q.limit = Some(whole("limit", value)?),
                "offset" => q.offset = whole("offset", value)?,
                n if ignore.contains(&n) => {}
                n => {
                    return Err(format!(
                        "unknown parameter {:?}: this endpoint takes window, group_by, limit and offset",
                        shorten(n)
                    ));
                }
            }
        }
        let max = q.window.max_series();
        if let Some(limit) = q.limit
            && !(1..=max).contains(&limit)
        {
            return Err(format!(
                "limit must be 1 to {max} for window={} (at most {MAX_POINTS} points per answer, {} per series); page with offset (got {limit})",
                q.window.as_str(),
                q.window.points()
            ));
        }
        Ok(q)
    }
}

/// At most this much of a client's text is echoed back in an error.
fn shorten(s: &str) -> String {
    s.chars().take(40).collect()
}
