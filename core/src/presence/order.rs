//! A map whose iteration order is JavaScript's own-property order.

#[cfg(feature = "std")]
use std::collections::{BTreeMap, HashMap};

/// If `key` is what JavaScript calls an array index — `"0"`..`"4294967294"` written without
/// leading zeros — its numeric value. Such keys come first, in ascending order.
pub fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return None;
    }
    let value = bytes
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    // 2^32 - 1 is the largest array length, so not an index
    u32::try_from(value).ok().filter(|&n| n != u32::MAX)
}

#[cfg(feature = "std")]
/// String keys to values, iterated the way `Object.getOwnPropertyNames` lists an object's keys:
/// array-index keys ascending, then the other keys in insertion order. Assigning to a present
/// key keeps its place; removing a key and adding it again moves it to the end.
///
/// Lookups, inserts and removals cost O(log N).
#[derive(Clone, Debug)]
pub struct JsOrderMap<V> {
    /// Array-index keys, ascending.
    indexed: BTreeMap<u32, (String, V)>,
    /// Other keys → their insertion sequence number.
    seq_of: HashMap<String, u64>,
    /// Insertion sequence number → key and value, for the other keys: iterating is a plain
    /// B-tree walk, with no hashing per key.
    named: BTreeMap<u64, (String, V)>,
    next_seq: u64,
}

#[cfg(feature = "std")]
impl<V> Default for JsOrderMap<V> {
    fn default() -> Self {
        Self {
            indexed: BTreeMap::new(),
            seq_of: HashMap::new(),
            named: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

#[cfg(feature = "std")]
impl<V: PartialEq> PartialEq for JsOrderMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

#[cfg(feature = "std")]
impl<V> JsOrderMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.indexed.len() + self.named.len()
    }

    /// True when no key is present.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        match array_index(key) {
            Some(i) => self.indexed.get(&i).map(|(_, v)| v),
            None => {
                let seq = self.seq_of.get(key)?;
                self.named.get(seq).map(|(_, v)| v)
            }
        }
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        match array_index(key) {
            Some(i) => self.indexed.get_mut(&i).map(|(_, v)| v),
            None => {
                let seq = self.seq_of.get(key)?;
                self.named.get_mut(seq).map(|(_, v)| v)
            }
        }
    }

    /// Sets `key` like a JS property assignment: a present key keeps its place, a new one goes
    /// where JavaScript would put it. Returns the previous value.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        if let Some(i) = array_index(&key) {
            return self.indexed.insert(i, (key, value)).map(|(_, v)| v);
        }
        if let Some(seq) = self.seq_of.get(&key) {
            if let Some((_, slot)) = self.named.get_mut(seq) {
                return Some(std::mem::replace(slot, value));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(key.clone(), seq);
        self.named.insert(seq, (key, value));
        None
    }

    /// Removes `key` like a JS `delete`: adding it again later puts it at the end.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        if let Some(i) = array_index(key) {
            return self.indexed.remove(&i).map(|(_, v)| v);
        }
        let seq = self.seq_of.remove(key)?;
        self.named.remove(&seq).map(|(_, v)| v)
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        self.indexed.clear();
        self.seq_of.clear();
        self.named.clear();
    }

    /// Keys and values in JavaScript order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        let indexed = self.indexed.values();
        let named = self.named.values();
        indexed.chain(named).map(|(k, v)| (k.as_str(), v))
    }

    /// Keys in JavaScript order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Values in JavaScript order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }

    /// Consumes the map, yielding keys and values in JavaScript order.
    pub fn into_entries(mut self) -> Vec<(String, V)> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(std::mem::take(&mut self.indexed).into_values());
        out.extend(std::mem::take(&mut self.named).into_values());
        out
    }
}
