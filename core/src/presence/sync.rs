//! The algorithm of phoenix.js `Presence.syncDiff` and `Presence.syncState`, written once over
//! a [`Model`]: the place presences live and the way they are read and changed.
//!
//! Two models run it. [`PresenceState`](super::PresenceState) keeps `serde_json` values and
//! reports callbacks as [`PresenceEvent`](super::PresenceEvent)s; the `rollcall` npm package
//! (crate `rollcall-wasm`) keeps live JavaScript objects, because phoenix.js callers see them
//! alias: `onLeave`'s `current` is the stored object, `list()` returns stored objects,
//! `syncState` overwrites the caller's `metas`. The rules — which metas a join keeps, which a
//! leave removes, which keys a resync joins and leaves, in which order callbacks fire — are
//! only here.
//!
//! Metas are handled as lists: the algorithm reads each meta's `phx_ref`, decides which
//! positions to keep, and asks the model for a new list made of those positions, so a model
//! whose values live elsewhere (in a JavaScript engine) never hands over a meta it does not
//! need to.
//!
//! Nothing in this module allocates more than the vectors of one call, and nothing depends on
//! `std`, so the WebAssembly build carries no JSON or formatting code.

use alloc::vec::Vec;

/// One key with its presence: an entry of a state, or of a diff's `joins` or `leaves`.
pub type Entry<M> = (<M as Model>::Key, <M as Model>::Presence);

/// A diff as entry lists: `(joins, leaves)`, each in JavaScript key order.
pub type EntryDiff<M> = (Vec<Entry<M>>, Vec<Entry<M>>);

/// A new metas list, as parts taken in order: each part is a list and the positions of the
/// elements taken from it.
pub type Parts<'a, M> = [(&'a <M as Model>::Metas, &'a [usize])];

/// What the presence algorithm needs from the place presences live.
///
/// A model holds the state being synced (and, for [`sync_state`], the new state it is synced
/// to) and the `onJoin` / `onLeave` callbacks. Presences may be values or shared handles; when
/// they are handles, changing the metas of a presence changes it wherever it is referenced,
/// which is what phoenix.js callers observe.
pub trait Model {
    /// A presence key.
    type Key: Clone;
    /// A presence: a value or a handle.
    type Presence: Clone;
    /// A presence's metas list (checked to be a list of metas).
    type Metas;
    /// A meta's `phx_ref`.
    type Ref;
    /// Why a call failed: a malformed value, or an error a callback raised.
    type Error;

    /// `state[key]`, or `None` when the key is absent or its value is falsy (phoenix.js tests
    /// presences for truthiness).
    fn get(&mut self, key: &Self::Key) -> Result<Option<Self::Presence>, Self::Error>;

    /// `state[key] = copy(presence)`: stores a JSON copy of `presence` under `key` and returns
    /// it. `previous` is what [`Model::get`] answered for the key.
    fn store_copy(
        &mut self,
        key: &Self::Key,
        presence: &Self::Presence,
        previous: Option<&Self::Presence>,
    ) -> Result<Self::Presence, Self::Error>;

    /// `delete state[key]`; `presence` is the value stored under the key.
    fn delete(&mut self, key: &Self::Key, presence: &Self::Presence) -> Result<(), Self::Error>;

    /// `presence.metas`, which must be an array of objects; the error names `key`.
    fn metas(
        &mut self,
        key: &Self::Key,
        presence: &Self::Presence,
    ) -> Result<Self::Metas, Self::Error>;

    /// The `phx_ref` of every meta of `metas`, in order.
    fn refs(&mut self, metas: &Self::Metas) -> Result<Vec<Self::Ref>, Self::Error>;

    /// `presence.metas = ` a new list made of `parts`.
    fn set_metas(
        &mut self,
        presence: &mut Self::Presence,
        parts: &Parts<'_, Self>,
    ) -> Result<(), Self::Error>;

    /// [`Model::set_metas`] on the presence stored under `key`. A model whose presences are
    /// handles needs nothing more.
    fn set_stored_metas(
        &mut self,
        key: &Self::Key,
        presence: &mut Self::Presence,
        parts: &Parts<'_, Self>,
    ) -> Result<(), Self::Error> {
        let _ = key;
        self.set_metas(presence, parts)
    }

    /// `presence.metas.length === 0`, read after `onLeave` ran (the callback may have changed
    /// it).
    fn has_no_metas(
        &mut self,
        key: &Self::Key,
        presence: &Self::Presence,
    ) -> Result<bool, Self::Error>;

    /// `a === b`, for two refs read from different copies (so objects are never equal).
    fn same_ref(&mut self, a: &Self::Ref, b: &Self::Ref) -> bool;

    /// A JSON copy of `presence` (phoenix.js's `JSON.parse(JSON.stringify(x))`), or `None`
    /// when JSON drops the value as an object member (`undefined`, a function).
    fn copy(&mut self, presence: &Self::Presence) -> Result<Option<Self::Presence>, Self::Error>;

    /// The numeric value of `key` if JavaScript lists it among an object's integer-like keys
    /// (see [`array_index`](super::array_index)).
    fn array_index(&mut self, key: &Self::Key) -> Option<u32>;

    /// `onJoin(key, current, joined)`: `current` is the presence before the join (unchanged),
    /// `joined` the diff's presence with only the joined metas.
    fn on_join(
        &mut self,
        key: &Self::Key,
        current: Option<&Self::Presence>,
        joined: &Self::Presence,
    ) -> Result<(), Self::Error>;

    /// `onLeave(key, current, left)`: `current` is the stored presence after the removal.
    fn on_leave(
        &mut self,
        key: &Self::Key,
        current: &Self::Presence,
        left: &Self::Presence,
    ) -> Result<(), Self::Error>;
}

/// What a state holds under a key, next to a presence of the new state with that key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// No presence, or a falsy value.
    Absent,
    /// A presence whose metas carry the same refs as the new presence's, position by position:
    /// nothing joins or leaves between them.
    Unchanged,
    /// A presence (whose refs may or may not differ from the new presence's).
    Present,
}

/// What `syncState` reads besides a [`Model`]: the entries of the current state (of which the
/// model's state is the copy phoenix.js makes) and of the new state, and two questions about
/// all of them at once, so that a model whose values live elsewhere can answer them in bulk.
pub trait Resync: Model {
    /// The current state's entry at `index` (JavaScript key order).
    fn old_entry(&mut self, index: usize) -> Result<Entry<Self>, Self::Error>;
    /// The new state's entry at `index` (JavaScript key order).
    fn new_entry(&mut self, index: usize) -> Result<Entry<Self>, Self::Error>;
    /// For each entry of the current state, whether `newState[key]` is truthy (phoenix.js reads
    /// the new state as a null-prototype object: only own keys count).
    fn in_new_state(&mut self) -> Result<Vec<bool>, Self::Error>;
    /// For each entry of the new state, what the model's state holds under its key. Answering
    /// [`Found::Present`] where [`Found::Unchanged`] would do is always right.
    fn found(&mut self) -> Result<Vec<Found>, Self::Error>;
}

/// The positions of `refs_of_list` that match none of `refs`: phoenix.js's
/// `metas.filter(m => refs.indexOf(m.phx_ref) < 0)`.
// one copy in the WebAssembly build, however many callers
#[inline(never)]
fn unmatched<M: Model>(model: &mut M, refs_of_list: &[M::Ref], refs: &[M::Ref]) -> Vec<usize> {
    let mut kept = Vec::with_capacity(refs_of_list.len());
    for (position, own) in refs_of_list.iter().enumerate() {
        if !refs.iter().any(|other| model.same_ref(own, other)) {
            kept.push(position);
        }
    }
    kept
}

/// Every position of a list of `len` elements.
fn all(len: usize) -> Vec<usize> {
    (0..len).collect()
}

/// phoenix.js `syncDiff` after its copy of the diff: every join, then every leave, each list in
/// JavaScript key order.
///
/// - A join stores a copy of the joined presence; when the key was present, its metas whose
///   `phx_ref` is not among the joined refs go first, in their old order. `onJoin` then gets
///   the previous presence and the diff's presence.
/// - A leave of an absent key is skipped. Otherwise the stored presence keeps the metas whose
///   ref is not among the left refs, `onLeave` gets it (even when nothing matched), and the key
///   is deleted if no meta is left after the callback.
///
/// A callback's error stops the call where it is, leaving the state as far as it got, as a
/// throwing callback does in phoenix.js.
pub fn apply_diff<M: Model>(
    model: &mut M,
    joins: Vec<Entry<M>>,
    leaves: Vec<Entry<M>>,
) -> Result<(), M::Error> {
    apply_joins(model, joins)?;
    apply_leaves(model, leaves)
}

/// The joins half of [`apply_diff`]: phoenix.js applies them before it looks at the leaves.
// one copy in the WebAssembly build, however many callers
#[inline(never)]
pub fn apply_joins<M: Model>(model: &mut M, joins: Vec<Entry<M>>) -> Result<(), M::Error> {
    for (key, joined) in joins {
        let current = model.get(&key)?;
        let mut stored = model.store_copy(&key, &joined, current.as_ref())?;
        if let Some(current) = &current {
            let joined_metas = model.metas(&key, &stored)?;
            let joined_refs = model.refs(&joined_metas)?;
            let current_metas = model.metas(&key, current)?;
            let current_refs = model.refs(&current_metas)?;
            let kept = unmatched(model, &current_refs, &joined_refs);
            if !kept.is_empty() {
                let joined_all = all(joined_refs.len());
                let parts = [
                    (&current_metas, &kept[..]),
                    (&joined_metas, &joined_all[..]),
                ];
                model.set_stored_metas(&key, &mut stored, &parts)?;
            }
        }
        model.on_join(&key, current.as_ref(), &joined)?;
    }
    Ok(())
}

/// The leaves half of [`apply_diff`].
// one copy in the WebAssembly build, however many callers
#[inline(never)]
pub fn apply_leaves<M: Model>(model: &mut M, leaves: Vec<Entry<M>>) -> Result<(), M::Error> {
    for (key, left) in leaves {
        let Some(mut current) = model.get(&key)? else {
            continue;
        };
        let left_metas = model.metas(&key, &left)?;
        let left_refs = model.refs(&left_metas)?;
        let current_metas = model.metas(&key, &current)?;
        let current_refs = model.refs(&current_metas)?;
        let remaining = unmatched(model, &current_refs, &left_refs);
        model.set_stored_metas(&key, &mut current, &[(&current_metas, &remaining[..])])?;
        model.on_leave(&key, &current, &left)?;
        if model.has_no_metas(&key, &current)? {
            model.delete(&key, &current)?;
        }
    }
    Ok(())
}

/// The diff phoenix.js `syncState` builds to bring the model's state to its new state, as
/// `(joins, leaves)`, before the copy [`sync_state`] makes of it.
///
/// - `leaves` names every key of the current state that the new state lacks (its whole
///   presence), then every key that lost metas (a copy of its current presence holding only the
///   lost metas), in the order an object filled that way lists its keys (integer-like keys
///   first).
/// - `joins` names, in new-state order, every new key (its whole new presence) and every key
///   that gained metas (the new presence, whose `metas` is **overwritten** with only the gained
///   ones — phoenix.js changes the caller's object there).
///
/// A key with the same refs in both states is in neither.
// one copy in the WebAssembly build, however many callers
#[inline(never)]
pub fn state_diff<M: Resync>(model: &mut M) -> Result<EntryDiff<M>, M::Error> {
    let mut leaves = Vec::new();
    for (index, kept) in model.in_new_state()?.into_iter().enumerate() {
        if !kept {
            leaves.push(model.old_entry(index)?);
        }
    }
    let mut joins = Vec::new();
    for (index, found) in model.found()?.into_iter().enumerate() {
        if found == Found::Unchanged {
            continue;
        }
        let (key, mut new_presence) = model.new_entry(index)?;
        let current = match found {
            Found::Present => model.get(&key)?,
            _ => None,
        };
        let Some(current) = current else {
            joins.push((key, new_presence));
            continue;
        };
        let new_metas = model.metas(&key, &new_presence)?;
        let new_refs = model.refs(&new_metas)?;
        let current_metas = model.metas(&key, &current)?;
        let current_refs = model.refs(&current_metas)?;
        let joined = unmatched(model, &new_refs, &current_refs);
        let left = unmatched(model, &current_refs, &new_refs);
        if !joined.is_empty() {
            model.set_metas(&mut new_presence, &[(&new_metas, &joined[..])])?;
            joins.push((key.clone(), new_presence));
        }
        if !left.is_empty() {
            if let Some(mut copy) = model.copy(&current)? {
                model.set_metas(&mut copy, &[(&current_metas, &left[..])])?;
                leaves.push((key, copy));
            }
        }
    }
    Ok((joins, js_order(model, leaves)))
}

/// phoenix.js `syncState` on a model whose state is already the copy phoenix.js makes of the
/// current state: the diff of [`state_diff`], copied as JSON copies it, then applied by
/// [`apply_diff`]. Callbacks fire for all joins in new-state order, then for the leaves of
/// vanished keys (whose `current` has no metas left), then for the partial leaves.
pub fn sync_state<M: Resync>(model: &mut M) -> Result<(), M::Error> {
    let (joins, leaves) = state_diff(model)?;
    let joins = copy_entries(model, joins)?;
    let leaves = copy_entries(model, leaves)?;
    apply_diff(model, joins, leaves)
}

/// JSON copies of the entries' presences, without the entries JSON drops.
// one copy in the WebAssembly build, however many callers
#[inline(never)]
fn copy_entries<M: Model>(
    model: &mut M,
    entries: Vec<Entry<M>>,
) -> Result<Vec<Entry<M>>, M::Error> {
    let mut copies = Vec::with_capacity(entries.len());
    for (key, presence) in entries {
        if let Some(copy) = model.copy(&presence)? {
            copies.push((key, copy));
        }
    }
    Ok(copies)
}

/// The entries in the order an object would list them had they been added in the given order:
/// integer-like keys first, ascending, then the others as given.
// one copy in the WebAssembly build, however many callers
#[inline(never)]
fn js_order<M: Model>(model: &mut M, entries: Vec<Entry<M>>) -> Vec<Entry<M>> {
    let mut indexed = Vec::new();
    let mut named = Vec::with_capacity(entries.len());
    for entry in entries {
        match model.array_index(&entry.0) {
            Some(index) => indexed.push((index, entry)),
            None => named.push(entry),
        }
    }
    if indexed.is_empty() {
        return named;
    }
    heap_sort(&mut indexed);
    let mut ordered: Vec<Entry<M>> = indexed.into_iter().map(|(_, entry)| entry).collect();
    ordered.extend(named);
    ordered
}

/// Sorts by the `u32` (distinct keys of one object, so stability does not matter). A heap sort:
/// O(n log n) and a few hundred bytes of WebAssembly, where the standard library's sorts are
/// several kilobytes.
fn heap_sort<T>(items: &mut [(u32, T)]) {
    fn sift_down<T>(items: &mut [(u32, T)], mut root: usize) {
        loop {
            let mut child = 2 * root + 1;
            if child >= items.len() {
                return;
            }
            if child + 1 < items.len() && items[child + 1].0 > items[child].0 {
                child += 1;
            }
            if items[root].0 >= items[child].0 {
                return;
            }
            items.swap(root, child);
            root = child;
        }
    }
    for root in (0..items.len() / 2).rev() {
        sift_down(items, root);
    }
    for end in (1..items.len()).rev() {
        items.swap(0, end);
        sift_down(&mut items[..end], 0);
    }
}

#[cfg(test)]
mod tests {
    use super::heap_sort;

    #[test]
    fn heap_sort_orders_by_the_number() {
        let mut items: Vec<(u32, char)> = "zyxwvutsrq"
            .chars()
            .zip([9, 3, 7, 0, 8, 1, 4294967294, 5, 2, 6])
            .map(|(c, n)| (n, c))
            .collect();
        heap_sort(&mut items);
        let order: Vec<u32> = items.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, [0, 1, 2, 3, 5, 6, 7, 8, 9, 4294967294]);
        let mut empty: Vec<(u32, ())> = Vec::new();
        heap_sort(&mut empty);
        let mut one = vec![(4, ())];
        heap_sort(&mut one);
        assert_eq!(one, [(4, ())]);
    }
}
