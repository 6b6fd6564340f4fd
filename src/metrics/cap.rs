use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

/// Bounds the distinct values of one label: the first `max` values are kept,
/// any further value becomes `other`. Whatever clients send, the label never
/// has more than `max + 1` values.
#[derive(Debug)]
pub(crate) struct LabelCap {
    max: usize,
    seen: RwLock<HashSet<Arc<str>>>,
    other: Arc<str>,
}

impl LabelCap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: RwLock::new(HashSet::new()),
            other: Arc::from("other"),
        }
    }

    /// The label value to use for `value`.
    pub(crate) fn get(&self, value: &str) -> Arc<str> {
        if let Ok(seen) = self.seen.read()
            && let Some(known) = seen.get(value)
        {
            return known.clone();
        }
        let Ok(mut seen) = self.seen.write() else {
            return self.other.clone();
        };
        if let Some(known) = seen.get(value) {
            return known.clone();
        }
        if seen.len() >= self.max {
            return self.other.clone();
        }
        let value: Arc<str> = Arc::from(value);
        seen.insert(value.clone());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_goes_to_other() {
        let cap = LabelCap::new(2);
        assert_eq!(&*cap.get("a"), "a");
        assert_eq!(&*cap.get("b"), "b");
        assert_eq!(&*cap.get("c"), "other");
        assert_eq!(&*cap.get("a"), "a");
    }
}
