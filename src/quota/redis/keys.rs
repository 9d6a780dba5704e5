//! The names of the quota store's Redis keys. Every name starts with the namespace's
//! `{hash tag}`, so all of a namespace's keys share one Cluster slot and a script that names
//! them in `KEYS` runs on one node; the scripts (lua/*.lua) get these names, never build them.

/// Key names under one namespace (`{namespace}:...`).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{namespace}`.
    prefix: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Keys {
        Keys {
            prefix: format!("{{{namespace}}}"),
        }
    }

    /// `{namespace}`: what every key starts with.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{ns}:SUFFIX`.
    pub(crate) fn named(&self, suffix: &str) -> String {
        written(|o| self.write_named(o, suffix))
    }

    /// A (project, model)'s sliding window: the sorted set of admission ids and the hash of
    /// their tokens.
    pub(crate) fn window(&self, project: &str, model: &str) -> (String, String) {
        (
            written(|o| self.write_window(o, project, model, "rq")),
            written(|o| self.write_window(o, project, model, "tk")),
        )
    }

    /// Appends a (project, model)'s window key to `out`: `part` `rq` its sorted set, `tk` its
    /// token hash. The `write_*` functions build the names a request's admission sends into
    /// one reused buffer (`format!` for each of them cost more than the rest of the call).
    pub(crate) fn write_window(&self, out: &mut String, project: &str, model: &str, part: &str) {
        push(out, &[&self.prefix, ":", project, ":", model, ":", part]);
    }

    /// The token hash of a (project, model)'s window.
    pub(crate) fn tokens(&self, project: &str, model: &str) -> String {
        written(|o| self.write_window(o, project, model, "tk"))
    }

    /// A (project, model)'s request count on quota day `day`.
    pub(crate) fn day(&self, project: &str, model: &str, day: i64) -> String {
        written(|o| self.write_day(o, project, model, day))
    }

    /// Appends [`Keys::day`] to `out`.
    pub(crate) fn write_day(&self, out: &mut String, project: &str, model: &str, day: i64) {
        use std::fmt::Write;
        push(out, &[&self.prefix, ":", project, ":", model, ":day:"]);
        let _ = write!(out, "{day}");
    }

    /// A (project, model)'s hold (`model` `*`: the whole project).
    pub(crate) fn cooldown(&self, project: &str, model: &str) -> String {
        written(|o| self.write_cooldown(o, project, model))
    }

    /// Appends [`Keys::cooldown`] to `out`.
    pub(crate) fn write_cooldown(&self, out: &mut String, project: &str, model: &str) {
        push(out, &[&self.prefix, ":cd:", project, ":", model]);
    }

    /// A disabled key's flag, by key id.
    pub(crate) fn disabled(&self, kid: &str) -> String {
        written(|o| self.write_disabled(o, kid))
    }

    /// Appends [`Keys::disabled`] to `out`.
    pub(crate) fn write_disabled(&self, out: &mut String, kid: &str) {
        push(out, &[&self.prefix, ":dis:", kid]);
    }

    /// Appends `{ns}:SUFFIX` ([`Keys::named`]) to `out`.
    pub(crate) fn write_named(&self, out: &mut String, suffix: &str) {
        push(out, &[&self.prefix, ":", suffix]);
    }

    /// The admission id counter.
    pub(crate) fn seq(&self) -> String {
        self.named("seq")
    }

    /// The set of `project|model` pairs counted in the last two days.
    pub(crate) fn pairs(&self) -> String {
        self.named("pairs")
    }

    /// The set of `project|model` pairs that have been held.
    pub(crate) fn held(&self) -> String {
        self.named("cds")
    }

    /// A project's Live API sessions: a sorted set of session ids scored by lease end (ms).
    pub(crate) fn live(&self, project: &str) -> String {
        format!("{}:live:{project}", self.prefix)
    }

    /// A client's keys (by its name, never its key): its sliding window (admission ids, and
    /// their tokens), its day's request count, its requests in flight, and its day's and
    /// month's micro-dollars spent and reserved, in the order client.lua reads them.
    pub(crate) fn client(&self, name: &str, day: i64, month: i64) -> [String; 6] {
        let b = format!("{}:cl:{name}", self.prefix);
        [
            format!("{b}:rq"),
            format!("{b}:tk"),
            format!("{b}:day:{day}"),
            format!("{b}:fl"),
            format!("{b}:usd:d:{day}"),
            format!("{b}:usd:m:{month}"),
        ]
    }

    /// The keys a client's settlement touches: its token hash, its in-flight set, its day's
    /// and month's spend.
    pub(crate) fn client_settle(&self, name: &str, day: i64, month: i64) -> [String; 4] {
        let [_, tk, _, fl, d, m] = self.client(name, day, month);
        [tk, fl, d, m]
    }

    /// A resource's affinity (which key created it).
    pub(crate) fn affinity(&self, resource: &str) -> String {
        format!("{}:aff:{resource}", self.prefix)
    }
}

/// `parts` appended to `out`, in order.
fn push(out: &mut String, parts: &[&str]) {
    out.reserve(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
}

/// The name `write` appends to an empty string.
fn written(write: impl FnOnce(&mut String)) -> String {
    let mut out = String::new();
    write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn every_name_carries_the_namespace_hash_tag_first() {
        let k = Keys::new("gqp");
        let (rq, tk) = k.window("p", "m");
        for name in [
            rq,
            tk,
            k.tokens("p", "m"),
            k.day("p", "m", 20_000),
            k.cooldown("p", "*"),
            k.disabled("kid"),
            k.seq(),
            k.pairs(),
            k.held(),
            k.affinity("files/x"),
            k.live("p"),
            k.named("led:since"),
        ]
        .into_iter()
        .chain(k.client("team-a", 20_000, 24_312))
        {
            assert!(name.starts_with("{gqp}:"), "{name}");
        }
        assert_eq!(k.day("p", "m", 7), "{gqp}:p:m:day:7");
    }
}
