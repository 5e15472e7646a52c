//! The route an envelope carries: actors done (`prev`), the actor now (`curr`), actors to come
//! (`next`). Only `next` is the handler's to rewrite; the mesh owns the rest.

use serde::Serialize;

/// Why a route operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `advance` was called on a route whose `curr` is already empty.
    #[error("the route is already finished (route.curr is empty); nothing to advance")]
    AlreadyFinished,
    /// A handler changed `route.prev`, which records history and is read-only.
    #[error(
        "route.prev is read-only: a handler may rewrite route.next only (was {expected:?}, got {found:?})"
    )]
    PrevChanged {
        /// The `prev` the handler received.
        expected: Vec<String>,
        /// The `prev` the handler returned.
        found: Vec<String>,
    },
    /// A handler changed `route.curr`, which names the actor running now.
    #[error(
        "route.curr is read-only: a handler may rewrite route.next only (was {expected:?}, got {found:?})"
    )]
    CurrChanged {
        /// The `curr` the handler received.
        expected: String,
        /// The `curr` the handler returned.
        found: String,
    },
    /// The legacy `{actors, current}` form pointed past the end of `actors`.
    #[error("route.current = {current} is out of range for {len} actors (at most {len})")]
    CurrentOutOfRange {
        /// The index given.
        current: u64,
        /// The number of actors in the route.
        len: usize,
    },
}

/// An envelope's route.
///
/// ```
/// use troupe_core::Route;
/// let mut route = Route::new(vec![], "tokenize", vec!["score".into(), "judge".into()]);
/// route.next_mut().push("refine".into()); // handlers may rewrite what is still to come
/// route.advance().unwrap();
/// assert_eq!(route.prev(), ["tokenize"]);
/// assert_eq!(route.curr(), "score");
/// assert_eq!(route.next(), ["judge", "refine"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Route {
    prev: Vec<String>,
    curr: String,
    next: Vec<String>,
}

impl Route {
    /// A route at `curr`, having passed `prev`, with `next` still to come.
    pub fn new(prev: Vec<String>, curr: impl Into<String>, next: Vec<String>) -> Self {
        Self {
            prev,
            curr: curr.into(),
            next,
        }
    }

    /// A fresh route through `actors`, starting at the first (finished if `actors` is empty).
    pub fn through<I, A>(actors: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        let mut it = actors.into_iter().map(Into::into);
        let curr = it.next().unwrap_or_default();
        Self {
            prev: Vec::new(),
            curr,
            next: it.collect(),
        }
    }

    /// Converts the older `{actors, current}` form: `prev = actors[..current]`,
    /// `curr = actors[current]` (or `""` when `current == actors.len()`), `next` the rest.
    pub fn from_actors(mut actors: Vec<String>, current: u64) -> Result<Self, RouteError> {
        let len = actors.len();
        let idx = usize::try_from(current)
            .ok()
            .filter(|&i| i <= len)
            .ok_or(RouteError::CurrentOutOfRange { current, len })?;
        let rest = actors.split_off(idx);
        let mut rest = rest.into_iter();
        let curr = rest.next().unwrap_or_default();
        Ok(Self {
            prev: actors,
            curr,
            next: rest.collect(),
        })
    }

    /// Actors already done, oldest first.
    pub fn prev(&self) -> &[String] {
        &self.prev
    }

    /// The actor that must process the envelope now; `""` once the route is finished.
    pub fn curr(&self) -> &str {
        &self.curr
    }

    /// Actors still to come.
    pub fn next(&self) -> &[String] {
        &self.next
    }

    /// The part of the route a handler may rewrite (insert, remove, replace steps).
    pub fn next_mut(&mut self) -> &mut Vec<String> {
        &mut self.next
    }

    /// Replaces what is still to come.
    pub fn set_next(&mut self, next: Vec<String>) {
        self.next = next;
    }

    /// True when no actor is left (`curr` is empty).
    pub fn is_finished(&self) -> bool {
        self.curr.is_empty()
    }

    /// Moves one step: `prev += [curr]`, `curr = next[0]` (or `""`), `next = next[1..]`.
    pub fn advance(&mut self) -> Result<(), RouteError> {
        if self.is_finished() {
            return Err(RouteError::AlreadyFinished);
        }
        let done = std::mem::take(&mut self.curr);
        self.prev.push(done);
        if !self.next.is_empty() {
            self.curr = self.next.remove(0);
        }
        Ok(())
    }

    /// Leaves `curr` and continues through `actors` instead of the current `next`
    /// (used when a retry policy routes an exhausted envelope to its `onExhausted` actors).
    pub fn divert(&mut self, actors: &[String]) -> Result<(), RouteError> {
        self.next = actors.to_vec();
        self.advance()
    }

    /// Checks that `self` differs from `original` in `next` only.
    pub fn check_rewrite_of(&self, original: &Route) -> Result<(), RouteError> {
        if self.prev != original.prev {
            return Err(RouteError::PrevChanged {
                expected: original.prev.clone(),
                found: self.prev.clone(),
            });
        }
        if self.curr != original.curr {
            return Err(RouteError::CurrChanged {
                expected: original.curr.clone(),
                found: self.curr.clone(),
            });
        }
        Ok(())
    }

    /// Every actor of the route in order: `prev`, then `curr` (if any), then `next`.
    pub fn actors(&self) -> impl Iterator<Item = &str> {
        self.prev
            .iter()
            .map(String::as_str)
            .chain((!self.curr.is_empty()).then_some(self.curr.as_str()))
            .chain(self.next.iter().map(String::as_str))
    }

    /// Position of `curr` in the whole route (the number of actors already done).
    pub fn position(&self) -> usize {
        self.prev.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z][a-z0-9-]{0,8}", 0..6)
    }

    #[test]
    fn advance_walks_the_route_and_stops() {
        let mut r = Route::through(["a", "b"]);
        r.advance().unwrap();
        assert_eq!(
            (r.prev(), r.curr(), r.next()),
            (&["a".to_string()][..], "b", &[][..])
        );
        r.advance().unwrap();
        assert!(r.is_finished());
        assert_eq!(r.advance(), Err(RouteError::AlreadyFinished));
    }

    #[test]
    fn legacy_form_converts_and_rejects_out_of_range() {
        let actors: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let r = Route::from_actors(actors.clone(), 1).unwrap();
        assert_eq!(r, Route::new(vec!["a".into()], "b", vec!["c".into()]));
        let done = Route::from_actors(actors.clone(), 3).unwrap();
        assert!(done.is_finished());
        assert_eq!(done.prev().len(), 3);
        assert_eq!(
            Route::from_actors(actors, 4),
            Err(RouteError::CurrentOutOfRange { current: 4, len: 3 })
        );
    }

    #[test]
    fn rewrite_check_allows_next_only() {
        let original = Route::new(vec!["a".into()], "b", vec!["c".into()]);
        let mut ok = original.clone();
        ok.set_next(vec!["x".into(), "y".into()]);
        assert!(ok.check_rewrite_of(&original).is_ok());
        let bad_prev = Route::new(vec![], "b", vec![]);
        assert!(matches!(
            bad_prev.check_rewrite_of(&original),
            Err(RouteError::PrevChanged { .. })
        ));
        let bad_curr = Route::new(vec!["a".into()], "z", vec![]);
        assert!(matches!(
            bad_curr.check_rewrite_of(&original),
            Err(RouteError::CurrChanged { .. })
        ));
    }

    #[test]
    fn divert_replaces_next_and_moves_on() {
        let mut r = Route::new(vec![], "a", vec!["b".into()]);
        r.divert(&["dlq".into(), "alert".into()]).unwrap();
        assert_eq!(r, Route::new(vec!["a".into()], "dlq", vec!["alert".into()]));
    }

    proptest! {
        /// Advancing never loses, reorders or invents an actor, and always terminates.
        #[test]
        fn advance_preserves_the_actor_sequence(actors in names(), start in 0usize..7) {
            let start = start.min(actors.len());
            let mut r = Route::from_actors(actors.clone(), start as u64).unwrap();
            let before: Vec<String> = r.actors().map(String::from).collect();
            prop_assert_eq!(&before, &actors);
            let mut steps = 0;
            while !r.is_finished() {
                let pos = r.position();
                r.advance().unwrap();
                prop_assert_eq!(r.position(), pos + 1);
                steps += 1;
            }
            prop_assert_eq!(steps, actors.len() - start);
            prop_assert_eq!(r.prev(), &actors[..]);
        }

        /// Any rewrite of `next` passes the check; the actors before it are unchanged.
        #[test]
        fn next_rewrites_always_pass(actors in names(), new_next in names()) {
            prop_assume!(!actors.is_empty());
            let original = Route::through(actors);
            let mut edited = original.clone();
            edited.set_next(new_next);
            prop_assert!(edited.check_rewrite_of(&original).is_ok());
        }
    }
}
