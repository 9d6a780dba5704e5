//! `/api/ai/usage/`: the history over a window (`1h`, `24h`, `7d`, `30d`), grouped by model,
//! key, project, client or nothing, as dense series of points: at most [`MAX_POINTS`] points
//! per answer, the series paged with `limit` and `offset` (ordered by their group's name).

use std::collections::{BTreeMap, HashMap};

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;

mod params;

pub use self::params::{GroupBy, MAX_POINTS, Query, Window};
use super::Ledger;
use super::book::{Counters, MINUTE_MS, field};

/// One point's numbers as JSON: counts, tokens and costs in USD.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Numbers {
    pub requests: u64,
    pub upstream_429: u64,
    pub refused: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub thinking_tokens: u64,
    pub tool_tokens: u64,
    pub cost_usd: f64,
    pub list_cost_usd: f64,
    /// Requests answered from the response cache.
    pub cache_hits: u64,
    /// Tokens and list-price cost those answers saved.
    pub saved_tokens: u64,
    pub saved_cost_usd: f64,
    /// Images generated (image models) and seconds of video (video models): what those are
    /// billed by.
    pub images: u64,
    pub video_seconds: u64,
}

/// Nano-USD as USD.
pub fn usd(nano: u64) -> f64 {
    nano as f64 / 1e9
}

impl From<&Counters> for Numbers {
    fn from(c: &Counters) -> Numbers {
        let v = &c.0;
        Numbers {
            requests: v[field::REQUESTS],
            upstream_429: v[field::UPSTREAM_429],
            refused: v[field::REFUSED],
            errors: v[field::ERRORS],
            input_tokens: v[field::INPUT],
            cached_tokens: v[field::CACHED],
            output_tokens: v[field::OUTPUT],
            thinking_tokens: v[field::THINKING],
            tool_tokens: v[field::TOOL],
            cost_usd: usd(v[field::COST]),
            list_cost_usd: usd(v[field::LIST_COST]),
            cache_hits: v[field::CACHE_HITS],
            saved_tokens: v[field::SAVED_TOKENS],
            saved_cost_usd: usd(v[field::SAVED_COST]),
            images: v[field::IMAGES],
            video_seconds: v[field::VIDEO_SECONDS],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Bucket start, RFC 3339 (UTC).
    pub t: String,
    #[serde(flatten)]
    pub n: Numbers,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesOut {
    pub group: BTreeMap<&'static str, String>,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    #[serde(flatten)]
    pub n: Numbers,
    pub unpriced_requests: u64,
}

/// The answer of `/api/ai/usage/`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub success: bool,
    pub window: &'static str,
    pub step_seconds: i64,
    /// `memory` (this replica since it started) or `redis` (every replica, kept 48 h / 35 d).
    pub source: &'static str,
    pub series: Vec<SeriesOut>,
    /// Series in the whole window, over all pages.
    pub total_series: usize,
    /// The `offset` of the next page, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    /// Totals over the whole window, every series (not only this page's).
    pub totals: Totals,
    pub timestamp: String,
}

pub fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Ledger {
    /// Answer a usage query (reading Redis first when the ledger is shared).
    pub async fn report(&self, q: Query) -> Result<Report, crate::quota::StoreError> {
        let now = self.clock.now_ms();
        let (span, step) = q.window.span_step();
        let points = (span / step) as usize;
        let last = now.div_euclid(step);
        let first = last - points as i64 + 1;
        if step == MINUTE_MS {
            self.refresh(Some(first * step), None).await?;
        } else {
            self.refresh(None, Some(first * step)).await?;
        }
        // First pass: which groups have usage, and the totals. Only the page's groups get
        // points, so an answer's memory is bounded by MAX_POINTS whatever the ledger holds.
        let mut present: std::collections::HashSet<u32> = std::collections::HashSet::new();
        let mut totals = Counters::default();
        // A client that never called has no id: it matches no series.
        let only = q
            .client
            .as_deref()
            .map(|name| self.clients.get(name).unwrap_or(u32::MAX));
        self.each_bucket(step != MINUTE_MS, first, last, |_, _, bucket| {
            for (series, c) in bucket {
                if only.is_some_and(|id| id != series.client) {
                    continue;
                }
                present.insert(q.group_by.of(series));
                totals.add(c);
            }
        });
        let mut labelled: Vec<(BTreeMap<&'static str, String>, u32)> = present
            .into_iter()
            .map(|id| (self.group_label(q.group_by, id), id))
            .collect();
        labelled.sort();
        let total_series = labelled.len();
        let limit = q.limit.unwrap_or(q.window.max_series());
        let page: Vec<(BTreeMap<&'static str, String>, u32)> =
            labelled.into_iter().skip(q.offset).take(limit).collect();
        let next_offset = Some(q.offset.saturating_add(limit)).filter(|n| *n < total_series);
        // Group id -> one Counters per point, for the page's groups.
        let mut groups: HashMap<u32, Vec<Counters>> = page
            .iter()
            .map(|(_, id)| (*id, vec![Counters::default(); points]))
            .collect();
        self.each_bucket(step != MINUTE_MS, first, last, |i, _, bucket| {
            for (series, c) in bucket {
                if only.is_some_and(|id| id != series.client) {
                    continue;
                }
                if let Some(g) = groups.get_mut(&q.group_by.of(series)) {
                    g[i].add(c);
                }
            }
        });
        let series: Vec<SeriesOut> = page
            .into_iter()
            .map(|(group, id)| SeriesOut {
                group,
                points: groups
                    .remove(&id)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Point {
                        t: rfc3339((first + i as i64) * step),
                        n: c.into(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Report {
            success: true,
            window: q.window.as_str(),
            step_seconds: step / 1000,
            source: self.backend(),
            series,
            total_series,
            next_offset,
            totals: Totals {
                n: (&totals).into(),
                unpriced_requests: totals.0[field::UNPRICED],
            },
            timestamp: rfc3339(now),
        })
    }

    fn group_label(&self, by: GroupBy, id: u32) -> BTreeMap<&'static str, String> {
        let mut g = BTreeMap::new();
        if let Some(name) = by.name() {
            let value = match by {
                GroupBy::Key => self.key_label(id),
                GroupBy::Model | GroupBy::AskedModel => self.models.name(id).to_string(),
                GroupBy::Project => self.projects.name(id).to_string(),
                GroupBy::Client => self.clients.name(id).to_string(),
                GroupBy::None => String::new(),
            };
            g.insert(name, value);
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_parse_and_bad_ones_say_what_is_wrong() {
        let q = Query::parse(Some("window=24h&group_by=key&key=secret"), &["key"]).unwrap();
        assert_eq!((q.window, q.group_by), (Window::Day, GroupBy::Key));
        let d = Query::parse(None, &[]).unwrap();
        assert_eq!((d.window, d.group_by), (Window::Hour, GroupBy::Model));
        assert!(
            Query::parse(Some("window=2h"), &[])
                .unwrap_err()
                .contains("window")
        );
        assert!(
            Query::parse(Some("group_by=x"), &[])
                .unwrap_err()
                .contains("group_by")
        );
        assert!(
            Query::parse(Some("step=5"), &[])
                .unwrap_err()
                .contains("step")
        );
        for w in [Window::Hour, Window::Day, Window::Week, Window::Month] {
            let (span, step) = w.span_step();
            assert!(span / step <= 1500, "{w:?}");
            assert!(w.max_series() * w.points() <= MAX_POINTS);
        }
    }

    #[test]
    fn a_page_over_the_points_cap_is_a_clear_error_naming_limit() {
        let q = Query::parse(Some("window=24h&group_by=model&limit=34&offset=68"), &[]).unwrap();
        assert_eq!((q.limit, q.offset), (Some(34), 68));
        let e = Query::parse(Some("window=24h&limit=35"), &[]).unwrap_err();
        assert!(
            e.contains("limit") && e.contains("34") && e.contains("offset"),
            "{e}"
        );
        assert!(
            Query::parse(Some("limit=0"), &[])
                .unwrap_err()
                .contains("limit")
        );
        assert!(
            Query::parse(Some("offset=-1"), &[])
                .unwrap_err()
                .contains("offset")
        );
        // A shorter window fits more series.
        assert!(Query::parse(Some("window=1h&limit=800"), &[]).is_ok());
    }
}
