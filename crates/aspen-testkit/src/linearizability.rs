//! Linearizability checker for per-key register histories.
//!
//! Test clients record every operation they issue against the store (with invocation and
//! response times taken from one monotonic clock, see [`History`]); [`check`] then decides
//! whether the recorded history is linearizable with respect to a register-per-key model.
//!
//! # Model
//!
//! Every key is an independent register holding an `Option<Vec<u8>>` (`None` = absent). Because
//! linearizability is compositional (P-compositionality), the history is partitioned by key and
//! each key is checked on its own.
//!
//! * `Read { observed }` is legal when the register holds `observed`.
//! * `Write { value }` sets the register (`None` deletes the key).
//! * `Cas { expected, new, succeeded }`: `Some(true)` is legal only when the register equals
//!   `expected` and sets it to `new`; `Some(false)` is legal only when it differs and changes
//!   nothing; `None` (client did not learn the result) sets `new` exactly when the register equals
//!   `expected`.
//!
//! # Unknown outcomes
//!
//! An operation with `ret: None` (timeout, lost connection) may have taken effect at any point
//! after its invocation, or never. Reads with unknown outcome constrain nothing and are dropped.
//! Writes and CASes with unknown outcome never have to be linearized before any other operation's
//! response (their response time is +infinity) and may be omitted altogether.
//!
//! # Algorithm
//!
//! Wing & Gong's backtracking search with Lowe's memoization. The operations' call and return
//! events are kept in a doubly linked list ordered by time. The search repeatedly picks an
//! operation whose call event precedes the first remaining return event, applies it to the model
//! and removes its events from the list; if it reaches a return event it backtracks. Visited
//! configurations (set of linearized operations as a bitset, model state) are memoized so that
//! each is explored at most once.
//!
//! Ties: when a return event and a call event carry the same timestamp, the call is ordered first,
//! i.e. the two operations are treated as concurrent. This is the permissive choice: it never
//! reports a violation that depends on the order of two events the clock could not tell apart.
//!
//! Resource bounds: the memo cache is limited to [`MAX_CACHE_BYTES`] (approximately); when it is
//! full it is cleared, which only costs pruning, never correctness. The search checks its deadline
//! periodically and reports [`Verdict::Unknown`] when it passes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Approximate upper bound on the memory used by one key's memo cache.
pub const MAX_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How many search steps run between two deadline checks.
const DEADLINE_CHECK_INTERVAL: u64 = 1024;

/// How many operations of the longest linearizable prefix an explanation lists at most.
const EXPLANATION_PREFIX_OPS: usize = 40;

/// One operation as observed by a test client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Identifier of the client (a client issues one operation at a time).
    pub client: u64,
    /// The key operated on.
    pub key: Vec<u8>,
    /// Invocation time in nanoseconds (see [`History::now`]).
    pub call: u64,
    /// Response time in nanoseconds, or `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// What the operation did and what the client observed.
    pub kind: OpKind,
}

/// The kind of an [`Operation`] together with its observed result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A read that observed `observed` (`None` = key absent).
    Read { observed: Option<Vec<u8>> },
    /// A write of `value` (`None` = delete).
    Write { value: Option<Vec<u8>> },
    /// Compare-and-swap: if the register equals `expected`, set it to `new`. `succeeded` is the
    /// result the client saw, or `None` if it does not know.
    Cas { expected: Option<Vec<u8>>, new: Vec<u8>, succeeded: Option<bool> },
}

/// Result of a linearizability check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// The history of `key` is not linearizable; `explanation` is meant for humans.
    NotLinearizable { key: Vec<u8>, explanation: String },
    /// The deadline passed while checking `key`; nothing is known about it.
    Unknown { key: Vec<u8>, reason: String },
}

impl Verdict {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(f, "key {} is NOT linearizable:\n{explanation}", show_bytes(key))
            }
            Verdict::Unknown { key, reason } => {
                write!(f, "unknown for key {}: {reason}", show_bytes(key))
            }
        }
    }
}

/// Thread-safe recorder of operations, shared by the test clients.
#[derive(Debug)]
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl History {
    /// A new, empty history whose clock starts now.
    pub fn new() -> Arc<History> {
        Arc::new(History { start: Instant::now(), ops: Mutex::new(Vec::new()) })
    }

    /// Nanoseconds since this history was created (monotonic).
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends a completed (or abandoned) operation.
    pub fn record(&self, op: Operation) {
        self.lock().push(op);
    }

    /// A copy of all recorded operations, in recording order.
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // A panicking recorder cannot leave the Vec half-updated, so poisoning is harmless.
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Checks every key of `history` independently (initial value of every key: absent).
///
/// `deadline` bounds the whole check. Returns the first violation found; otherwise the first key
/// whose check ran out of time; otherwise [`Verdict::Linearizable`].
pub fn check(history: &[Operation], deadline: Duration) -> Verdict {
    let deadline = Instant::now() + deadline;
    let mut by_key: BTreeMap<&[u8], Vec<(usize, &Operation)>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push((index, op));
    }
    let mut unknown = None;
    for (key, ops) in by_key {
        match check_ops(key, &ops, None, deadline, MAX_CACHE_BYTES) {
            Verdict::Linearizable => {}
            violation @ Verdict::NotLinearizable { .. } => return violation,
            timeout @ Verdict::Unknown { .. } => {
                unknown.get_or_insert(timeout);
            }
        }
    }
    unknown.unwrap_or(Verdict::Linearizable)
}

/// Checks `ops` as the history of one register starting at `initial`.
///
/// All operations are treated as operating on the same register whatever their `key`; the key
/// reported in the verdict is that of the first operation. Operation numbers (`#i`) in the
/// explanation are indices into `ops`.
pub fn check_key(ops: &[Operation], initial: Option<Vec<u8>>, deadline: Instant) -> Verdict {
    let key = ops.first().map(|op| op.key.clone()).unwrap_or_default();
    let indexed: Vec<(usize, &Operation)> = ops.iter().enumerate().collect();
    check_ops(&key, &indexed, initial, deadline, MAX_CACHE_BYTES)
}

/// Interned register value: an index into `Register::values`.
type Value = u32;

/// An operation compiled against interned values.
#[derive(Clone, Copy)]
enum Step {
    Read(Value),
    Write(Value),
    Cas { expected: Value, new: Value, succeeded: Option<bool> },
}

impl Step {
    /// The register value after applying this step to `state`, or `None` if it is illegal there.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Read(observed) => (observed == state).then_some(state),
            Step::Write(value) => Some(value),
            Step::Cas { expected, new, succeeded } => match (succeeded, state == expected) {
                (Some(true), true) | (None, true) => Some(new),
                (Some(false), false) | (None, false) => Some(state),
                (Some(true), false) | (Some(false), true) => None,
            },
        }
    }
}

/// One operation of a single-key history, as seen by the search.
struct SearchOp<'a> {
    /// Index of the operation in the caller's slice (for explanations).
    index: usize,
    op: &'a Operation,
    step: Step,
    /// Whether the operation returned (and so must be linearized before its return event).
    known: bool,
}

/// A call or return event in the time-ordered event list.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Interning table of register values.
#[derive(Default)]
struct Register {
    ids: HashMap<Option<Vec<u8>>, Value>,
    values: Vec<Option<Vec<u8>>>,
}

impl Register {
    fn intern(&mut self, value: &Option<Vec<u8>>) -> Value {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = Value::try_from(self.values.len()).expect("more than 2^32 distinct values");
        self.ids.insert(value.clone(), id);
        self.values.push(value.clone());
        id
    }

    fn show(&self, value: Value) -> String {
        show_value(&self.values[value as usize])
    }
}

/// Memo cache of visited (linearized set, state) configurations, bounded in size.
struct Cache {
    seen: HashSet<(Box<[u64]>, Value)>,
    max_entries: usize,
    clears: u64,
}

impl Cache {
    fn new(words: usize, max_bytes: usize) -> Cache {
        // Key payload + tuple/box header + hash table overhead, roughly.
        let entry_bytes = words * 8 + 48;
        Cache { seen: HashSet::new(), max_entries: (max_bytes / entry_bytes).max(1), clears: 0 }
    }

    /// Records the configuration; returns false if it had been visited already.
    fn insert(&mut self, bits: &[u64], state: Value) -> bool {
        if self.seen.len() >= self.max_entries {
            // Forgetting visited configurations only loses pruning; the search stays exact.
            self.seen = HashSet::new();
            self.clears += 1;
        }
        self.seen.insert((bits.into(), state))
    }
}

/// Doubly linked list over the events, with sentinel node 0 for both ends. Event `i` is node
/// `i + 1`. Removal and reinsertion follow the "dancing links" discipline: nodes are restored in
/// the reverse order of their removal.
struct EventList {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    const HEAD: usize = 0;

    fn new(len: usize) -> EventList {
        let nodes = len + 1;
        EventList {
            next: (0..nodes).map(|i| (i + 1) % nodes).collect(),
            prev: (0..nodes).map(|i| (i + nodes - 1) % nodes).collect(),
        }
    }

    fn remove(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn restore(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }
}

/// Outcome of the raw search.
enum SearchResult {
    Linearizable,
    /// Operation indices (into the search ops) of the longest linearizable prefix found.
    Stuck(Vec<usize>),
    Timeout {
        steps: u64,
    },
}

fn check_ops(
    key: &[u8],
    ops: &[(usize, &Operation)],
    initial: Option<Vec<u8>>,
    deadline: Instant,
    max_cache_bytes: usize,
) -> Verdict {
    let mut register = Register::default();
    let initial = register.intern(&initial);
    let search_ops: Vec<SearchOp<'_>> = ops
        .iter()
        .filter(|(_, op)| op.ret.is_some() || !matches!(op.kind, OpKind::Read { .. }))
        .map(|&(index, op)| {
            let step = match &op.kind {
                OpKind::Read { observed } => Step::Read(register.intern(observed)),
                OpKind::Write { value } => Step::Write(register.intern(value)),
                OpKind::Cas { expected, new, succeeded } => Step::Cas {
                    expected: register.intern(expected),
                    new: register.intern(&Some(new.clone())),
                    succeeded: *succeeded,
                },
            };
            SearchOp { index, op, step, known: op.ret.is_some() }
        })
        .collect();
    let events = build_events(&search_ops);

    let mut cache = Cache::new(search_ops.len().div_ceil(64), max_cache_bytes);
    match search(&search_ops, &events, initial, deadline, &mut cache) {
        SearchResult::Linearizable => Verdict::Linearizable,
        SearchResult::Stuck(prefix) => Verdict::NotLinearizable {
            key: key.to_vec(),
            explanation: explain(key, &search_ops, &events, &register, initial, &prefix),
        },
        SearchResult::Timeout { steps } => Verdict::Unknown {
            key: key.to_vec(),
            reason: format!(
                "deadline passed after {steps} search steps over {} operations (memo cache cleared {} times)",
                search_ops.len(),
                cache.clears
            ),
        },
    }
}

/// Call and return events ordered by time; calls before returns at equal times. Operations with
/// unknown outcome get no return event (their response is at +infinity).
fn build_events(ops: &[SearchOp<'_>]) -> Vec<Event> {
    let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        let call = op.op.call;
        timed.push((call, false, i));
        if let Some(ret) = op.op.ret {
            // A response cannot precede its own invocation; clamp clock glitches.
            timed.push((ret.max(call), true, i));
        }
    }
    // `false` (call) sorts before `true` (return) at equal times.
    timed.sort_unstable();
    timed.into_iter().map(|(_, is_return, op)| Event { op, is_call: !is_return }).collect()
}

fn search(
    ops: &[SearchOp<'_>],
    events: &[Event],
    initial: Value,
    deadline: Instant,
    cache: &mut Cache,
) -> SearchResult {
    let mut call_node = vec![0; ops.len()];
    let mut return_node = vec![None; ops.len()];
    for (i, event) in events.iter().enumerate() {
        if event.is_call {
            call_node[event.op] = i + 1;
        } else {
            return_node[event.op] = Some(i + 1);
        }
    }
    let mut list = EventList::new(events.len());
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut remaining_known = ops.iter().filter(|op| op.known).count();
    let mut state = initial;
    // Linearized operations in order, with the state before each.
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut node = list.next[EventList::HEAD];
    let mut steps: u64 = 0;

    loop {
        // Unknown-outcome operations still pending can simply be omitted.
        if remaining_known == 0 {
            return SearchResult::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(DEADLINE_CHECK_INTERVAL) && Instant::now() >= deadline {
            return SearchResult::Timeout { steps };
        }
        // While known operations remain, a return event lies ahead, so `node` is never the sentinel.
        debug_assert_ne!(node, EventList::HEAD);
        let event = events[node - 1];
        let op = event.op;
        if event.is_call {
            if let Some(next_state) = ops[op].step.apply(state) {
                linearized[op / 64] |= 1 << (op % 64);
                if cache.insert(&linearized, next_state) {
                    stack.push((op, state));
                    state = next_state;
                    list.remove(call_node[op]);
                    if let Some(ret) = return_node[op] {
                        list.remove(ret);
                        remaining_known -= 1;
                    }
                    if stack.len() > longest.len() {
                        longest = stack.iter().map(|&(op, _)| op).collect();
                    }
                    node = list.next[EventList::HEAD];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            node = list.next[node];
        } else {
            // `op` returned and every way to linearize it here has been tried: backtrack.
            let Some((undo, previous)) = stack.pop() else {
                return SearchResult::Stuck(longest);
            };
            linearized[undo / 64] &= !(1 << (undo % 64));
            state = previous;
            if let Some(ret) = return_node[undo] {
                list.restore(ret);
                remaining_known += 1;
            }
            list.restore(call_node[undo]);
            node = list.next[call_node[undo]];
        }
    }
}

/// Human-readable account of why a single-key history is not linearizable.
fn explain(
    key: &[u8],
    ops: &[SearchOp<'_>],
    events: &[Event],
    register: &Register,
    initial: Value,
    prefix: &[usize],
) -> String {
    let mut out = String::new();
    let unknown = ops.iter().filter(|op| !op.known).count();
    let _ = writeln!(
        out,
        "key {}: {} operations ({} with unknown outcome, not counting dropped reads) admit no linearization.",
        show_bytes(key),
        ops.len(),
        unknown
    );
    let _ = writeln!(
        out,
        "Longest linearizable prefix found: {} operations, register initially {}:",
        prefix.len(),
        register.show(initial)
    );
    let mut state = initial;
    let mut states_after = Vec::with_capacity(prefix.len());
    for &op in prefix {
        state = ops[op].step.apply(state).expect("prefix replays");
        states_after.push(state);
    }
    let skip = prefix.len().saturating_sub(EXPLANATION_PREFIX_OPS);
    if skip > 0 {
        let _ = writeln!(out, "  ... {skip} earlier operations elided ...");
    }
    for (position, (&op, &after)) in prefix.iter().zip(&states_after).enumerate().skip(skip) {
        let _ = writeln!(out, "  {:>4}. {}  => register {}", position + 1, describe(&ops[op]), register.show(after));
    }

    // The operations that could come next: all pending calls before the first pending return.
    let mut done = vec![false; ops.len()];
    for &op in prefix {
        done[op] = true;
    }
    let mut candidates = Vec::new();
    let mut blocking = None;
    for event in events.iter().filter(|event| !done[event.op]) {
        if event.is_call {
            candidates.push(event.op);
        } else {
            blocking = Some(event.op);
            break;
        }
    }
    let _ = writeln!(out, "After this prefix the register holds {}.", register.show(state));
    if let Some(op) = blocking {
        let _ = writeln!(
            out,
            "Could not place {} which returned at {} and so must be linearized by then;",
            describe(&ops[op]),
            ops[op].op.ret.unwrap_or_default()
        );
    }
    let _ = writeln!(out, "none of the operations invoked before that return extends the prefix:");
    for op in candidates {
        let reason = match ops[op].step.apply(state) {
            None => why_illegal(&ops[op], register, state),
            Some(after) => {
                format!("legal here (register would become {}) but leads to a dead end", register.show(after))
            }
        };
        let _ = writeln!(out, "  - {}: {reason}", describe(&ops[op]));
    }
    out
}

fn why_illegal(op: &SearchOp<'_>, register: &Register, state: Value) -> String {
    match op.step {
        Step::Read(observed) => {
            format!("observed {} but the register holds {}", register.show(observed), register.show(state))
        }
        Step::Cas { expected, succeeded: Some(true), .. } => format!(
            "reported success, but the register holds {}, not the expected {}",
            register.show(state),
            register.show(expected)
        ),
        Step::Cas { expected, succeeded: Some(false), .. } => {
            format!("reported failure, but the register holds the expected {}", register.show(expected))
        }
        Step::Write(_) | Step::Cas { .. } => "illegal".to_string(),
    }
}

fn describe(op: &SearchOp<'_>) -> String {
    let o = op.op;
    let kind = match &o.kind {
        OpKind::Read { observed } => format!("read -> {}", show_value(observed)),
        OpKind::Write { value: Some(value) } => format!("write {}", show_bytes(value)),
        OpKind::Write { value: None } => "delete".to_string(),
        OpKind::Cas { expected, new, succeeded } => {
            let result = match succeeded {
                Some(true) => "succeeded",
                Some(false) => "failed",
                None => "result unknown",
            };
            format!("cas {} -> {} ({result})", show_value(expected), show_bytes(new))
        }
    };
    let ret = o.ret.map_or_else(|| "unknown".to_string(), |ret| ret.to_string());
    format!("#{} client {} {kind} [call {}, ret {ret}]", op.index, o.client, o.call)
}

fn show_value(value: &Option<Vec<u8>>) -> String {
    value.as_deref().map_or_else(|| "absent".to_string(), show_bytes)
}

/// Printable UTF-8 is shown quoted, anything else as hex.
fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => {
            let mut hex = String::from("0x");
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            hex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    fn op(client: u64, key: &str, call: u64, ret: Option<u64>, kind: OpKind) -> Operation {
        Operation { client, key: key.as_bytes().to_vec(), call, ret, kind }
    }

    fn read(client: u64, call: u64, ret: u64, observed: Option<Vec<u8>>) -> Operation {
        op(client, "k", call, Some(ret), OpKind::Read { observed })
    }

    fn write(client: u64, call: u64, ret: Option<u64>, value: Option<Vec<u8>>) -> Operation {
        op(client, "k", call, ret, OpKind::Write { value })
    }

    fn cas(
        client: u64,
        call: u64,
        ret: Option<u64>,
        expected: Option<Vec<u8>>,
        new: &str,
        ok: Option<bool>,
    ) -> Operation {
        op(client, "k", call, ret, OpKind::Cas { expected, new: new.as_bytes().to_vec(), succeeded: ok })
    }

    fn verdict(history: &[Operation]) -> Verdict {
        check(history, Duration::from_secs(10))
    }

    fn assert_linearizable(history: &[Operation]) {
        let verdict = verdict(history);
        assert!(verdict.is_linearizable(), "expected linearizable, got {verdict}");
    }

    fn assert_violation(history: &[Operation], expected_key: &str) -> String {
        match verdict(history) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, expected_key.as_bytes(), "{explanation}");
                explanation
            }
            other => panic!("expected a violation on {expected_key:?}, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            read(1, 0, 10, None),
            write(1, 20, Some(30), v("a")),
            read(2, 40, 50, v("a")),
            write(2, 60, Some(70), None),
            read(1, 80, 90, None),
        ]);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let explanation = assert_violation(
            &[write(1, 0, Some(10), v("a")), write(1, 20, Some(30), v("b")), read(2, 40, 50, v("a"))],
            "k",
        );
        assert!(explanation.contains("observed \"a\" but the register holds \"b\""), "{explanation}");
    }

    #[test]
    fn read_concurrent_with_write_may_see_the_old_value() {
        assert_linearizable(&[write(1, 0, Some(100), v("a")), read(2, 10, 50, None)]);
    }

    #[test]
    fn read_concurrent_with_write_may_see_the_new_value() {
        assert_linearizable(&[write(1, 0, Some(100), v("a")), read(2, 10, 50, v("a"))]);
    }

    #[test]
    fn events_with_equal_timestamps_are_concurrent() {
        // The read's call and the write's return share a timestamp: either order is allowed.
        assert_linearizable(&[write(1, 0, Some(50), v("a")), read(2, 50, 60, None)]);
    }

    #[test]
    fn unknown_write_may_take_effect_after_it_was_abandoned() {
        assert_linearizable(&[
            write(1, 0, None, v("a")),
            read(2, 100, 110, None),
            read(2, 200, 210, v("a")),
            read(3, 300, 310, v("a")),
        ]);
    }

    #[test]
    fn unknown_write_may_never_take_effect() {
        assert_linearizable(&[write(1, 0, None, v("a")), read(2, 100, 110, None), read(2, 200, 210, None)]);
    }

    #[test]
    fn unknown_write_cannot_take_effect_before_its_call() {
        assert_violation(&[read(2, 0, 10, v("a")), write(1, 20, None, v("a"))], "k");
    }

    #[test]
    fn unknown_write_takes_effect_at_most_once() {
        // a (unknown), then b overwrites it; a cannot reappear after b was observed.
        assert_violation(
            &[
                write(1, 0, None, v("a")),
                read(2, 10, 20, v("a")),
                write(2, 30, Some(40), v("b")),
                read(2, 50, 60, v("a")),
            ],
            "k",
        );
    }

    #[test]
    fn reads_with_unknown_outcome_constrain_nothing() {
        assert_linearizable(&[op(1, "k", 0, None, OpKind::Read { observed: v("never written") })]);
    }

    #[test]
    fn successful_cas_sets_the_new_value() {
        assert_linearizable(&[
            write(1, 0, Some(10), v("a")),
            cas(1, 20, Some(30), v("a"), "b", Some(true)),
            read(2, 40, 50, v("b")),
        ]);
    }

    #[test]
    fn failed_cas_leaves_the_register_unchanged() {
        assert_linearizable(&[
            write(1, 0, Some(10), v("a")),
            cas(1, 20, Some(30), v("x"), "b", Some(false)),
            read(2, 40, 50, v("a")),
        ]);
        assert_violation(
            &[write(1, 0, Some(10), v("a")), cas(1, 20, Some(30), v("x"), "b", Some(false)), read(2, 40, 50, v("b"))],
            "k",
        );
    }

    #[test]
    fn cas_reporting_success_when_expected_value_impossible_is_not_linearizable() {
        let explanation =
            assert_violation(&[write(1, 0, Some(10), v("a")), cas(2, 20, Some(30), v("x"), "b", Some(true))], "k");
        assert!(explanation.contains("reported success"), "{explanation}");
    }

    #[test]
    fn cas_reporting_failure_when_register_must_equal_expected_is_not_linearizable() {
        assert_violation(&[write(1, 0, Some(10), v("a")), cas(2, 20, Some(30), v("a"), "b", Some(false))], "k");
    }

    #[test]
    fn cas_on_absent_key_succeeds_when_expecting_absent() {
        assert_linearizable(&[cas(1, 0, Some(10), None, "a", Some(true)), read(2, 20, 30, v("a"))]);
    }

    #[test]
    fn unknown_cas_may_or_may_not_take_effect() {
        let unknown = cas(1, 0, None, None, "a", None);
        assert_linearizable(&[unknown.clone(), read(2, 10, 20, v("a"))]);
        assert_linearizable(&[unknown, read(2, 10, 20, None)]);
    }

    #[test]
    fn cas_with_unknown_result_applies_only_when_expected_matches() {
        // The CAS returned (result unseen) while the register held "z": it cannot have installed "a".
        assert_violation(
            &[write(1, 0, Some(10), v("z")), cas(1, 20, Some(30), None, "a", None), read(2, 40, 50, v("a"))],
            "k",
        );
    }

    #[test]
    fn new_old_inversion_is_not_linearizable() {
        // W(1) spans both reads; the first read sees 1, a later read (invoked after the first
        // returned) sees the initial value again.
        let explanation =
            assert_violation(&[write(1, 0, Some(1000), v("1")), read(2, 10, 20, v("1")), read(3, 30, 40, None)], "k");
        assert!(explanation.contains("client 3 read -> absent"), "{explanation}");
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = [
            op(1, "a", 0, Some(10), OpKind::Write { value: v("1") }),
            op(2, "b", 0, Some(10), OpKind::Write { value: v("2") }),
            // Reading key a's value under key b would be fine if keys were not independent.
            op(3, "b", 20, Some(30), OpKind::Read { observed: v("1") }),
            op(3, "a", 40, Some(50), OpKind::Read { observed: v("1") }),
        ];
        let explanation = assert_violation(&history, "b");
        assert!(explanation.contains("#2 client 3 read -> \"1\""), "indices refer to the full history: {explanation}");
    }

    #[test]
    fn check_key_honours_the_initial_value() {
        let ops = [read(1, 0, 10, v("init"))];
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(check_key(&ops, v("init"), deadline).is_linearizable());
        assert!(matches!(check_key(&ops, None, deadline), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn explanation_lists_the_longest_prefix_and_the_unplaceable_op() {
        let explanation =
            assert_violation(&[write(1, 0, Some(10), v("a")), read(2, 20, 30, v("a")), read(3, 40, 50, v("zzz"))], "k");
        assert!(explanation.contains("Longest linearizable prefix found: 2 operations"), "{explanation}");
        assert!(explanation.contains("1. #0 client 1 write \"a\" [call 0, ret 10]"), "{explanation}");
        assert!(explanation.contains("Could not place #2 client 3 read -> \"zzz\""), "{explanation}");
    }

    #[test]
    fn a_tiny_cache_bound_does_not_change_the_verdict() {
        let history = [
            write(1, 0, Some(100), v("a")),
            write(2, 0, Some(100), v("b")),
            write(3, 0, Some(100), v("c")),
            read(4, 200, 210, v("b")),
            read(4, 220, 230, v("a")),
        ];
        let indexed: Vec<_> = history.iter().enumerate().collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(matches!(check_ops(b"k", &indexed, None, deadline, 1), Verdict::NotLinearizable { .. }));
        assert!(check_ops(b"k", &indexed[..4], None, deadline, 1).is_linearizable());
    }

    /// `n` mutually concurrent writes of distinct values, then two reads that no order of the
    /// writes explains. Refuting it explores every subset of the writes.
    fn adversarial(n: u64) -> Vec<Operation> {
        let mut history: Vec<_> = (0..n).map(|i| write(i, i, Some(1000 + i), v(&i.to_string()))).collect();
        history.push(read(n, 5000, 5010, v("0")));
        history.push(read(n, 5020, 5030, v("1")));
        history
    }

    #[test]
    fn adversarial_history_refuted_when_small() {
        assert_violation(&adversarial(8), "k");
    }

    #[test]
    fn deadline_yields_unknown_not_a_wrong_answer() {
        let started = Instant::now();
        let verdict = check(&adversarial(40), Duration::from_millis(20));
        assert!(matches!(&verdict, Verdict::Unknown { key, .. } if key == b"k"), "{verdict}");
        assert!(started.elapsed() < Duration::from_secs(2), "deadline overrun: {:?}", started.elapsed());
    }

    #[test]
    fn history_recorder_collects_from_many_threads() {
        let history = History::new();
        assert!(history.is_empty());
        let threads: Vec<_> = (0..4)
            .map(|client| {
                let history = Arc::clone(&history);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let call = history.now();
                        let ret = history.now();
                        assert!(ret >= call);
                        history.record(op(client, "k", call, Some(ret), OpKind::Read { observed: None }));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(history.len(), 400);
        assert_eq!(history.operations().len(), 400);
        assert!(check(&history.operations(), Duration::from_secs(10)).is_linearizable());
    }

    /// splitmix64: a deterministic pseudo-random generator for test histories.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Simulates `clients` clients against real registers: operation `i` takes effect at time
    /// `100 * i` on a random key and is given a random interval around that point on a free client.
    /// A small share of writes and CASes lose their response (and some of those never apply).
    fn random_linearizable_history(seed: u64, ops: usize, keys: u64, clients: u64) -> Vec<Operation> {
        let mut rng = Rng(seed);
        let mut registers: HashMap<u64, Option<Vec<u8>>> = HashMap::new();
        let mut free_at = vec![0u64; clients as usize];
        let mut history = Vec::with_capacity(ops);
        let mut tick = 0u64;
        while history.len() < ops {
            tick += 1;
            let point = tick * 100;
            let free: Vec<usize> = (0..free_at.len()).filter(|&c| free_at[c] < point).collect();
            if free.is_empty() {
                continue;
            }
            let client = free[rng.below(free.len() as u64) as usize];
            let call = point - rng.below((point - free_at[client]).min(1500));
            let ret = point + rng.below(1500);
            let key = rng.below(keys);
            let register = registers.entry(key).or_default();
            let random_value = |rng: &mut Rng| format!("v{}", rng.below(6)).into_bytes();
            let lost = rng.below(100) == 0;
            let applies = !lost || rng.below(2) == 0;
            let kind = match rng.below(10) {
                0..4 => OpKind::Read { observed: register.clone() },
                4..7 => {
                    let value = if rng.below(8) == 0 { None } else { Some(random_value(&mut rng)) };
                    if applies {
                        *register = value.clone();
                    }
                    OpKind::Write { value }
                }
                _ => {
                    let expected = if rng.below(2) == 0 { register.clone() } else { Some(random_value(&mut rng)) };
                    let new = random_value(&mut rng);
                    let succeeded = *register == expected;
                    if succeeded && applies {
                        *register = Some(new.clone());
                    }
                    OpKind::Cas { expected, new, succeeded: (!lost).then_some(succeeded) }
                }
            };
            free_at[client] = ret;
            let key = format!("key{key}").into_bytes();
            history.push(Operation { client: client as u64, key, call, ret: (!lost).then_some(ret), kind });
        }
        history
    }

    /// Reference semantics by exhaustive enumeration: some subset containing every completed
    /// operation has an order that respects real time (`a` before `b` when `a.ret < b.call`) and
    /// is legal for the register.
    fn brute_force(ops: &[Operation]) -> bool {
        fn extend(ops: &[Operation], used: &mut Vec<bool>, state: &Option<Vec<u8>>) -> bool {
            let done = ops.iter().zip(used.iter()).all(|(op, &used)| used || op.ret.is_none());
            if done {
                return true;
            }
            for i in 0..ops.len() {
                // Candidates: unused ops that no other unused completed op must precede.
                let blocked = (0..ops.len()).any(|j| !used[j] && j != i && ops[j].ret.is_some_and(|r| r < ops[i].call));
                if used[i] || blocked {
                    continue;
                }
                let next = match &ops[i].kind {
                    OpKind::Read { observed } => (observed == state).then(|| state.clone()),
                    OpKind::Write { value } => Some(value.clone()),
                    OpKind::Cas { expected, new, succeeded } => match (succeeded, expected == state) {
                        (Some(true) | None, true) => Some(Some(new.clone())),
                        (Some(false) | None, false) => Some(state.clone()),
                        _ => None,
                    },
                };
                if let Some(next) = next {
                    used[i] = true;
                    let ok = extend(ops, used, &next);
                    used[i] = false;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        // Reads with unknown outcome are unconstrained.
        let ops: Vec<_> =
            ops.iter().filter(|op| op.ret.is_some() || !matches!(op.kind, OpKind::Read { .. })).cloned().collect();
        extend(&ops, &mut vec![false; ops.len()], &None)
    }

    #[test]
    fn agrees_with_exhaustive_enumeration_on_small_random_histories() {
        let mut rng = Rng(42);
        let value = |rng: &mut Rng| match rng.below(3) {
            0 => None,
            n => Some(vec![b'0' + n as u8]),
        };
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..3000 {
            let history: Vec<Operation> = (0..1 + rng.below(6))
                .map(|client| {
                    // Coarse times so that equal timestamps (ties) are common.
                    let call = rng.below(8);
                    let ret = (rng.below(5) != 0).then(|| call + rng.below(4));
                    let kind = match rng.below(3) {
                        0 => OpKind::Read { observed: value(&mut rng) },
                        1 => OpKind::Write { value: value(&mut rng) },
                        _ => OpKind::Cas {
                            expected: value(&mut rng),
                            new: value(&mut rng).unwrap_or_else(|| b"9".to_vec()),
                            succeeded: [Some(true), Some(false), None][rng.below(3) as usize],
                        },
                    };
                    op(client, "k", call, ret, kind)
                })
                .collect();
            let expected = brute_force(&history);
            let verdict = verdict(&history);
            assert_eq!(verdict.is_linearizable(), expected, "{history:#?}\n{verdict}");
            assert!(!matches!(verdict, Verdict::Unknown { .. }));
            if expected { linearizable += 1 } else { not += 1 }
        }
        assert!(linearizable > 300 && not > 300, "unbalanced sample: {linearizable} vs {not}");
    }

    #[test]
    fn random_linearizable_history_checks_quickly() {
        let history = random_linearizable_history(7, 2000, 5, 8);
        assert!(history.iter().any(|op| op.ret.is_none()), "generator should include lost responses");
        let started = Instant::now();
        let verdict = check(&history, Duration::from_secs(60));
        let elapsed = started.elapsed();
        assert!(verdict.is_linearizable(), "{verdict}");
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        eprintln!("2000-op linearizable history checked in {elapsed:?}");
    }

    #[test]
    fn random_history_with_a_corrupted_read_is_not_linearizable() {
        let mut history = random_linearizable_history(11, 2000, 5, 8);
        let victim = (history.len() / 2..history.len())
            .find(|&i| history[i].ret.is_some() && matches!(history[i].kind, OpKind::Read { .. }))
            .expect("history has completed reads");
        history[victim].kind = OpKind::Read { observed: v("never written") };
        let expected_key = String::from_utf8(history[victim].key.clone()).unwrap();
        let started = Instant::now();
        let explanation = assert_violation(&history, &expected_key);
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        assert!(explanation.contains(&format!("#{victim} ")), "{explanation}");
        eprintln!("2000-op corrupted history refuted in {elapsed:?}\n{explanation}");
    }
}
