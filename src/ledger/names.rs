//! Interned names of the ledger's dimensions (projects, models, keys, clients): a series is
//! four small ids. Each dimension is capped, so names clients choose (models) cannot grow the
//! ledger: past the cap a name is counted as [`OVERFLOW`].

use parking_lot::RwLock;
use std::sync::Arc;

/// The name every name past a dimension's cap is counted under.
pub const OVERFLOW: &str = "other";
/// The name of "none" (a refused request has no key and no project).
pub const NONE: &str = "-";
/// The ids of [`NONE`] and [`OVERFLOW`] in every dimension.
pub const NONE_ID: u32 = 0;
pub const OVERFLOW_ID: u32 = 1;

/// One dimension's names.
#[derive(Debug)]
pub struct Names {
    cap: usize,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    names: Vec<Arc<str>>,
    ids: crate::hashing::Map<Arc<str>, u32>,
}

impl Names {
    /// At most `cap` names of their own, plus [`OVERFLOW`] and [`NONE`].
    pub fn new(cap: usize) -> Names {
        let n = Names {
            cap,
            inner: RwLock::new(Inner::default()),
        };
        n.insert(NONE);
        n.insert(OVERFLOW);
        n
    }

    fn insert(&self, name: &str) -> u32 {
        let mut g = self.inner.write();
        if let Some(id) = g.ids.get(name) {
            return *id;
        }
        let id = g.names.len() as u32;
        let name: Arc<str> = name.into();
        g.names.push(name.clone());
        g.ids.insert(name, id);
        id
    }

    /// The id of `name`; a new name gets one while under the cap and when `may_add`, else it
    /// is counted as [`OVERFLOW`]. `|` (the separator in Redis) becomes `_`.
    pub fn id(&self, name: &str, may_add: bool) -> u32 {
        {
            let g = self.inner.read();
            if let Some(id) = g.ids.get(name) {
                return *id;
            }
            // Two fixed names plus the cap.
            if !may_add || g.names.len() >= self.cap + 2 {
                return OVERFLOW_ID;
            }
        }
        if name.contains('|') {
            return self.id(&name.replace('|', "_"), may_add);
        }
        let mut g = self.inner.write();
        if let Some(id) = g.ids.get(name) {
            return *id;
        }
        if g.names.len() >= self.cap + 2 {
            return OVERFLOW_ID;
        }
        let id = g.names.len() as u32;
        let name: Arc<str> = name.into();
        g.names.push(name.clone());
        g.ids.insert(name, id);
        id
    }

    /// The id `name` already has, if any.
    pub fn get(&self, name: &str) -> Option<u32> {
        let g = self.inner.read();
        g.ids.get(name).copied()
    }

    /// Whether new names are counted as [`OVERFLOW`] now.
    pub fn is_full(&self) -> bool {
        self.len() >= self.cap + 2
    }

    /// The name of `id`.
    pub fn name(&self, id: u32) -> Arc<str> {
        let g = self.inner.read();
        g.names
            .get(id as usize)
            .cloned()
            .unwrap_or_else(|| OVERFLOW.into())
    }

    pub fn len(&self) -> usize {
        self.inner.read().names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_share_the_overflow_id() {
        let n = Names::new(2);
        let a = n.id("a", true);
        assert_eq!(n.id("a", false), a);
        assert_eq!(n.id("new", false), 1, "not allowed to add");
        let b = n.id("b", true);
        assert_ne!(a, b);
        assert_eq!(n.id("c", true), 1, "over the cap");
        assert_eq!(&*n.name(1), OVERFLOW);
        assert_eq!(n.len(), 4);
        assert_eq!(&*n.name(n.id("x|y", true)), "other");
        let m = Names::new(5);
        assert_eq!(&*m.name(m.id("x|y", true)), "x_y");
    }
}
