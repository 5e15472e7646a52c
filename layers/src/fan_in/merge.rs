//! Building the merge of an origin from its slices.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use troupe_core::headers::{FAN_IN, FAN_IN_MISSING, FIRST_ATTEMPT, SPAWNED};
use troupe_core::{DecodeLimits, Envelope, ErrorInfo, FanIn, HandlerError, Phase, Reason};

use super::store::StoredSlice;

/// Error type of a merge that failed because slices failed.
pub const FAN_IN_FAILED: &str = "FanInFailed";
/// Error type of a merge that failed because slices did not arrive in time.
pub const FAN_IN_TIMEOUT: &str = "FanInTimeout";

/// Combines the payloads of an origin's slices into the merge's payload.
///
/// ```
/// use serde_json::json;
/// use troupe_core::HandlerError;
/// use troupe_layers::fan_in::Merge;
///
/// /// Adds up numeric slices.
/// struct Sum;
/// impl Merge for Sum {
///     fn merge(&self, _key: Option<&str>, payloads: Vec<serde_json::Value>) -> Result<serde_json::Value, HandlerError> {
///         Ok(json!(payloads.iter().filter_map(|p| p.as_f64()).sum::<f64>()))
///     }
/// }
/// assert_eq!(Sum.merge(None, vec![json!(1), json!(2.5)]).unwrap(), json!(3.5));
/// ```
pub trait Merge: Send + Sync + 'static {
    /// `payloads` holds every slice's payload by slice index (`null` for a slice missing
    /// from a partial merge); `aggregation_key` is the fan-in's, if it has one. An error
    /// fails the origin (it goes to `x-sump` with that error).
    fn merge(&self, aggregation_key: Option<&str>, payloads: Vec<Value>) -> Result<Value, HandlerError>;
}

/// The default merge: the list of slice payloads by index; with an aggregation key
/// (Asya's form), slice 0's payload with the other slices' payloads placed at that key.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListMerge;

impl Merge for ListMerge {
    fn merge(&self, aggregation_key: Option<&str>, payloads: Vec<Value>) -> Result<Value, HandlerError> {
        let Some(pointer) = aggregation_key.filter(|k| !k.is_empty()) else {
            return Ok(Value::Array(payloads));
        };
        let mut payloads = payloads.into_iter();
        let mut base = payloads.next().unwrap_or(Value::Null);
        set_pointer(&mut base, pointer, Value::Array(payloads.collect()))?;
        Ok(base)
    }
}

/// Sets the value at RFC 6901 `pointer` in `target`, adding its last segment if missing.
fn set_pointer(target: &mut Value, pointer: &str, value: Value) -> Result<(), HandlerError> {
    let invalid = |why: &str| {
        HandlerError::new(
            "AggregationKeyError",
            format!("aggregation_key {pointer:?}: {why}"),
        )
    };
    let (parent, last) = pointer
        .rsplit_once('/')
        .ok_or_else(|| invalid("not a JSON pointer"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let parent = target
        .pointer_mut(parent)
        .ok_or_else(|| invalid("its parent is not in slice 0's payload"))?;
    match parent {
        Value::Object(map) => {
            map.insert(last, value);
            Ok(())
        }
        Value::Array(list) => {
            let index: usize = last
                .parse()
                .map_err(|_| invalid("not an index of the list it points into"))?;
            let slot = list
                .get_mut(index)
                .ok_or_else(|| invalid("past the end of the list it points into"))?;
            *slot = value;
            Ok(())
        }
        _ => Err(invalid(
            "points into a value that is neither an object nor a list",
        )),
    }
}

/// A slice read back from the store.
struct Read {
    index: u32,
    envelope: Option<Envelope>,
}

impl Read {
    fn failed(&self) -> bool {
        match &self.envelope {
            Some(env) => env.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&Phase::Failed),
            None => true,
        }
    }

    fn error(&self) -> Value {
        match &self.envelope {
            None => json!({"type": "UnreadableSlice", "message": "the stored slice could not be decoded"}),
            Some(env) => match env.status.as_ref().and_then(|s| s.error.as_ref()) {
                Some(ErrorInfo {
                    type_name, message, ..
                }) => json!({"type": type_name, "message": message}),
                None => json!({"type": "Failed", "message": "the slice failed"}),
            },
        }
    }
}

fn read(slices: Vec<StoredSlice>) -> Vec<Read> {
    // Stored bodies were accepted once; their size is not limited a second time.
    let limits = DecodeLimits {
        max_body_bytes: usize::MAX,
    };
    let mut read: Vec<Read> = slices
        .into_iter()
        .map(|s| Read {
            index: s.index,
            envelope: Envelope::from_slice(&s.body, &limits).ok(),
        })
        .collect();
    read.sort_by_key(|r| r.index);
    read
}

/// How an origin's merge came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every slice arrived.
    Complete,
    /// The timeout passed, and the merge fails naming the missing slices.
    TimedOutFailed(Duration),
    /// The timeout passed, and the merge continues with `null` for each missing slice.
    TimedOutPartial(Duration),
}

/// The merge of `origin` at aggregator `actor` from `slices` (any order) of `slice_count`.
///
/// Its id is the origin; route, headers and parent come from the lowest-indexed slice that
/// did not fail, less the fan-in header; the branches it lists as spawned are every
/// slice's, less the slices themselves (they ended here). It fails (for `x-sump`) when a
/// slice failed, a timeout says so, or the merge function fails.
pub fn merge(
    actor: &str,
    origin: &str,
    slice_count: u32,
    slices: Vec<StoredSlice>,
    ending: Ending,
    merger: &dyn Merge,
) -> Envelope {
    let read = read(slices);
    let base = read
        .iter()
        .find(|r| !r.failed())
        .or_else(|| read.iter().find(|r| r.envelope.is_some()))
        .and_then(|r| r.envelope.clone());
    let mut merged = base.unwrap_or_else(|| Envelope::new(troupe_core::Route::default(), Value::Null));
    let key = read
        .iter()
        .filter_map(|r| r.envelope.as_ref().and_then(FanIn::of).and_then(Result::ok))
        .find_map(|f| f.aggregation_key);
    if merged.id != origin {
        merged.parent_id = None;
        merged.id = origin.to_owned();
    }
    merged.headers.shift_remove(FAN_IN);
    merged.headers.shift_remove(FIRST_ATTEMPT);
    rejoin_spawned(&mut merged, &read);

    let failed: Vec<u32> = read.iter().filter(|r| r.failed()).map(|r| r.index).collect();
    let failed_slices: Vec<Value> = read
        .iter()
        .filter(|r| r.failed())
        .map(|r| json!({"index": r.index, "error": r.error()}))
        .collect();
    let present: BTreeSet<u32> = read.iter().map(|r| r.index).collect();
    let missing: Vec<u32> = (0..slice_count).filter(|i| !present.contains(i)).collect();
    let failure = |merged: &mut Envelope, type_name: &str, message: String| {
        merged.payload = json!({
            "origin_id": origin,
            "slice_count": slice_count,
            "failed_slices": failed_slices,
            "missing_slices": missing,
        })
        .into();
        fail(merged, actor, type_name, message);
    };
    if !failed.is_empty() {
        let message = format!(
            "{} of {slice_count} slices failed: {}",
            failed.len(),
            list(&failed)
        );
        failure(&mut merged, FAN_IN_FAILED, message);
        return merged;
    }
    if let Ending::TimedOutFailed(after) = ending {
        let message = format!(
            "{} of {slice_count} slices did not arrive within {after:?}: {}",
            missing.len(),
            list(&missing)
        );
        failure(&mut merged, FAN_IN_TIMEOUT, message);
        return merged;
    }
    let mut payloads = vec![Value::Null; slice_count as usize];
    for r in read {
        if let (Some(slot), Some(env)) = (payloads.get_mut(r.index as usize), r.envelope) {
            *slot = env.payload.into_value();
        }
    }
    if matches!(ending, Ending::TimedOutPartial(_)) && !missing.is_empty() {
        merged.headers.insert(FAN_IN_MISSING.to_owned(), json!(missing));
    }
    match merger.merge(key.as_deref(), payloads) {
        Ok(payload) => merged.payload = payload.into(),
        Err(error) => {
            let info = error.into_info();
            failure(
                &mut merged,
                &info.type_name,
                format!("the merge failed: {}", info.message),
            );
        }
    }
    merged
}

/// Marks `env`, a merge, failed at aggregator `actor` with error `type_name`: `message`, so
/// it goes to `x-sump` (for merge steps outside [`Merge`], such as a handler in a runtime).
pub fn fail(env: &mut Envelope, actor: &str, type_name: &str, message: String) {
    let status = env.status_mut();
    status.error = Some(ErrorInfo {
        message,
        mro: vec![type_name.to_owned()],
        type_name: type_name.to_owned(),
        traceback: None,
    });
    status.mark(Phase::Failed, Some(Reason::RuntimeError), actor);
}

/// The merge's spawned branches: every slice's, less the slices, which end at the merge.
fn rejoin_spawned(merged: &mut Envelope, read: &[Read]) {
    let slices: BTreeSet<&str> = read
        .iter()
        .filter_map(|r| r.envelope.as_ref().map(|e| e.id.as_str()))
        .collect();
    let mut spawned: Vec<Value> = Vec::new();
    for env in read.iter().filter_map(|r| r.envelope.as_ref()) {
        if let Some(Value::Array(ids)) = env.headers.get(SPAWNED) {
            for id in ids {
                let keep = id.as_str().is_some_and(|id| !slices.contains(id));
                if keep && !spawned.contains(id) {
                    spawned.push(id.clone());
                }
            }
        }
    }
    if spawned.is_empty() {
        merged.headers.shift_remove(SPAWNED);
    } else {
        merged.headers.insert(SPAWNED.to_owned(), Value::Array(spawned));
    }
}

/// `1, 5, 9` or, past twenty, the first twenty and how many more.
fn list(indices: &[u32]) -> String {
    let shown: Vec<String> = indices.iter().take(20).map(u32::to_string).collect();
    match indices.len() {
        n if n > 20 => format!("{} and {} more", shown.join(", "), n - 20),
        _ => shown.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_core::Route;
    use troupe_core::fan_in::mark_for_rejoin;

    fn split(n: usize) -> (Envelope, Vec<Envelope>) {
        let doc = Envelope::new(Route::through(["split", "embed", "join", "store"]), json!("doc"));
        let mut chunks: Vec<Envelope> = (0..n)
            .map(|i| {
                let mut c = doc.clone();
                c.payload = json!(i).into();
                c.id = if i == 0 {
                    doc.id.clone()
                } else {
                    format!("{}-{i}", doc.id)
                };
                c.route = Route::new(vec!["split".into(), "embed".into()], "join", vec!["store".into()]);
                c
            })
            .collect();
        mark_for_rejoin(&doc, "join", &mut chunks);
        let others: Vec<Value> = chunks[1..].iter().map(|c| json!(c.id)).collect();
        chunks[0].headers.insert(SPAWNED.into(), Value::Array(others));
        (doc, chunks)
    }

    fn stored(chunks: &[Envelope]) -> Vec<StoredSlice> {
        chunks
            .iter()
            .enumerate()
            .rev()
            .map(|(i, c)| StoredSlice {
                index: i as u32,
                body: c.to_vec(),
            })
            .collect()
    }

    #[test]
    fn a_complete_origin_lists_its_payloads_by_index_under_the_origins_id() {
        let (doc, chunks) = split(12);
        let merged = merge("join", &doc.id, 12, stored(&chunks), Ending::Complete, &ListMerge);
        assert_eq!(merged.id, doc.id);
        assert_eq!(merged.payload, json!((0..12).collect::<Vec<_>>()));
        assert!(!merged.headers.contains_key(FAN_IN));
        assert!(
            !merged.headers.contains_key(SPAWNED),
            "the slices ended at the merge"
        );
        assert_eq!(merged.route.curr(), "join");
        assert_eq!(merged.route.next(), ["store"]);
    }

    #[test]
    fn asya_form_places_the_slices_into_slice_zero() {
        let (doc, mut chunks) = split(3);
        chunks[0].payload = json!({"text": "hello", "deep": {"keep": 1}}).into();
        for c in &mut chunks {
            let mut f = FanIn::of(c).unwrap().unwrap();
            f.aggregation_key = Some("/deep/results".into());
            f.stamp(c);
        }
        let merged = merge("join", &doc.id, 3, stored(&chunks), Ending::Complete, &ListMerge);
        assert_eq!(
            merged.payload,
            json!({"text": "hello", "deep": {"keep": 1, "results": [1, 2]}})
        );
    }

    #[test]
    fn failed_slices_fail_the_origin_by_name() {
        let (doc, mut chunks) = split(4);
        for i in [1, 3] {
            fail(
                &mut chunks[i],
                "embed",
                "ValueError",
                format!("chunk {i} is empty"),
            );
        }
        let merged = merge("join", &doc.id, 4, stored(&chunks), Ending::Complete, &ListMerge);
        let status = merged.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(Phase::Failed));
        let error = status.error.as_ref().unwrap();
        assert_eq!(error.type_name, FAN_IN_FAILED);
        assert_eq!(error.message, "2 of 4 slices failed: 1, 3");
        assert_eq!(
            merged.payload["failed_slices"][1]["error"]["message"],
            "chunk 3 is empty"
        );
        assert_eq!(merged.id, doc.id);
    }

    #[test]
    fn a_timeout_names_the_missing_slices_or_merges_what_came() {
        let (doc, chunks) = split(4);
        let some = stored(&chunks)
            .into_iter()
            .filter(|s| s.index != 2)
            .collect::<Vec<_>>();
        let after = Duration::from_secs(60);
        let failed = merge(
            "join",
            &doc.id,
            4,
            some.clone(),
            Ending::TimedOutFailed(after),
            &ListMerge,
        );
        let error = failed.status.as_ref().unwrap().error.as_ref().unwrap();
        assert_eq!(error.type_name, FAN_IN_TIMEOUT);
        assert_eq!(failed.payload["missing_slices"], json!([2]));
        let partial = merge(
            "join",
            &doc.id,
            4,
            some,
            Ending::TimedOutPartial(after),
            &ListMerge,
        );
        assert_eq!(partial.payload, json!([0, 1, null, 3]));
        assert_eq!(partial.headers[FAN_IN_MISSING], json!([2]));
    }

    #[test]
    fn a_bad_aggregation_key_fails_the_merge_not_the_process() {
        let mut payload = json!([1]);
        assert!(set_pointer(&mut payload, "/x/y", json!(2)).is_err());
        assert!(set_pointer(&mut payload, "/5", json!(2)).is_err());
        set_pointer(&mut payload, "/0", json!(2)).unwrap();
        assert_eq!(payload, json!([2]));
        let mut object = json!({"a/b": 0});
        set_pointer(&mut object, "/a~1b", json!(1)).unwrap();
        assert_eq!(object, json!({"a/b": 1}));
    }
}
