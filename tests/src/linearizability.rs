//! A linearizability checker for recorded histories, in the style of Knossos and Porcupine:
//! the Wing–Gong search with Lowe's memoization of (operations linearized, model state).
//!
//! A history is operations with the time they were invoked and, if they returned, the time and
//! what they returned. An operation whose outcome is unknown (it timed out: it may or may not
//! have taken effect) is given a return at the end of time, so the search may place it anywhere
//! after its invocation, including after everything else, where it affects nothing: that is
//! "it never happened". The search walks the events in time order, tries to linearize each
//! operation whose call it meets, backtracks when it meets a return it could not reach, and
//! skips states it has seen before.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

/// The sequential specification of the object the history is about.
pub trait Model {
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: Debug + PartialEq;

    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the new state, if `output` is what the sequential object
    /// would have returned (`None`: the output is unknown, any is fine).
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    pub invoked: Instant,
    /// When it returned and what, or `None` if its outcome is unknown.
    pub returned: Option<(Instant, O)>,
    pub input: I,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Call(usize),
    Return(usize),
}

const NONE: usize = usize::MAX;

/// Whether `history` is linearizable with respect to `model`. On failure, the longest run of
/// operations the search managed to linearize, in order, to show where it went wrong.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Result<(), Vec<usize>> {
    let Some(end) =
        history.iter().flat_map(|op| std::iter::once(op.invoked).chain(op.returned.as_ref().map(|r| r.0))).max()
    else {
        return Ok(());
    };
    // Events in time order; at the same instant calls come first (touching intervals
    // overlap), and unknown outcomes return after everything.
    let mut events: Vec<(Instant, u8, Event)> = Vec::with_capacity(2 * history.len());
    for (id, op) in history.iter().enumerate() {
        events.push((op.invoked, 0, Event::Call(id)));
        match &op.returned {
            Some((at, _)) => events.push((*at, 1, Event::Return(id))),
            None => events.push((end, 2, Event::Return(id))),
        }
    }
    events.sort_by_key(|(at, order, _)| (*at, *order));
    let events: Vec<Event> = events.into_iter().map(|(_, _, event)| event).collect();

    // A doubly linked list over the events (node `head` before the first), so linearized
    // operations are lifted out and put back when the search backtracks.
    let head = events.len();
    let mut next: Vec<usize> = (1..events.len()).chain([NONE, 0]).collect();
    let mut prev: Vec<usize> = std::iter::once(head).chain(0..events.len() - 1).chain([NONE]).collect();
    let mut call_of = vec![0; history.len()];
    let mut return_of = vec![0; history.len()];
    for (index, event) in events.iter().enumerate() {
        match event {
            Event::Call(id) => call_of[*id] = index,
            Event::Return(id) => return_of[*id] = index,
        }
    }
    fn lift(next: &mut [usize], prev: &mut [usize], node: usize) {
        next[prev[node]] = next[node];
        if next[node] != NONE {
            prev[next[node]] = prev[node];
        }
    }
    fn put_back(next: &mut [usize], prev: &mut [usize], node: usize) {
        next[prev[node]] = node;
        if next[node] != NONE {
            prev[next[node]] = node;
        }
    }

    let mut linearized = vec![0u64; history.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut state = model.init();
    let mut entry = next[head];
    while next[head] != NONE {
        match events[entry] {
            Event::Call(id) => {
                let op = &history[id];
                let stepped = model.step(&state, &op.input, op.returned.as_ref().map(|(_, output)| output));
                linearized[id / 64] |= 1 << (id % 64);
                match stepped {
                    Some(new_state) if seen.insert((linearized.clone(), new_state.clone())) => {
                        stack.push((id, std::mem::replace(&mut state, new_state)));
                        lift(&mut next, &mut prev, call_of[id]);
                        lift(&mut next, &mut prev, return_of[id]);
                        if stack.len() > best.len() {
                            best = stack.iter().map(|(id, _)| *id).collect();
                        }
                        entry = next[head];
                    }
                    _ => {
                        linearized[id / 64] &= !(1 << (id % 64));
                        entry = next[entry];
                    }
                }
            }
            Event::Return(_) => {
                // An operation that must have happened by now could not be placed: undo the
                // last choice and try the next one.
                let Some((id, previous)) = stack.pop() else { return Err(best) };
                state = previous;
                linearized[id / 64] &= !(1 << (id % 64));
                put_back(&mut next, &mut prev, return_of[id]);
                put_back(&mut next, &mut prev, call_of[id]);
                entry = next[call_of[id]];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A register: write a value, read it back.
    struct Register;

    #[derive(Debug)]
    enum Op {
        Write(u32),
        Read,
    }

    impl Model for Register {
        type State = u32;
        type Input = Op;
        type Output = Option<u32>;

        fn init(&self) -> u32 {
            0
        }

        fn step(&self, state: &u32, input: &Op, output: Option<&Option<u32>>) -> Option<u32> {
            match (input, output) {
                (Op::Write(value), None | Some(None)) => Some(*value),
                (Op::Read, None) => Some(*state),
                (Op::Read, Some(Some(value))) if value == state => Some(*state),
                _ => None,
            }
        }
    }

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn op(base: Instant, from: u64, to: Option<u64>, input: Op, output: Option<u32>) -> Operation<Op, Option<u32>> {
        Operation { invoked: at(base, from), returned: to.map(|to| (at(base, to), output)), input }
    }

    #[test]
    fn accepts_concurrent_operations_in_some_order_and_refuses_a_stale_read() {
        let t = Instant::now();
        // w(1) and w(2) overlap; a read after both sees either, then a read of the other is wrong.
        let good = [
            op(t, 0, Some(10), Op::Write(1), None),
            op(t, 5, Some(15), Op::Write(2), None),
            op(t, 20, Some(25), Op::Read, Some(1)),
            op(t, 30, Some(35), Op::Read, Some(1)),
        ];
        assert!(check(&Register, &good).is_ok());
        let bad = [
            op(t, 0, Some(10), Op::Write(1), None),
            op(t, 5, Some(15), Op::Write(2), None),
            op(t, 20, Some(25), Op::Read, Some(1)),
            op(t, 30, Some(35), Op::Read, Some(2)),
        ];
        assert!(check(&Register, &bad).is_err());
        // A write acknowledged before a read began must be seen by it (a lost write).
        let lost = [op(t, 0, Some(10), Op::Write(7), None), op(t, 20, Some(30), Op::Read, Some(0))];
        assert!(check(&Register, &lost).is_err());
    }

    #[test]
    fn a_write_of_unknown_outcome_may_have_happened_or_not() {
        let t = Instant::now();
        let happened = [op(t, 0, None, Op::Write(3), None), op(t, 50, Some(60), Op::Read, Some(3))];
        assert!(check(&Register, &happened).is_ok());
        let did_not = [op(t, 0, None, Op::Write(3), None), op(t, 50, Some(60), Op::Read, Some(0))];
        assert!(check(&Register, &did_not).is_ok());
        // But it cannot take effect before it was invoked.
        let too_early = [op(t, 0, Some(10), Op::Read, Some(3)), op(t, 20, None, Op::Write(3), None)];
        assert!(check(&Register, &too_early).is_err());
    }

    #[test]
    fn a_long_history_is_checked_quickly() {
        let t = Instant::now();
        let mut history = Vec::new();
        for i in 0..5_000u64 {
            let value = (i % 7) as u32;
            history.push(op(t, i * 10, Some(i * 10 + 6), Op::Write(value), None));
            history.push(op(t, i * 10 + 3, Some(i * 10 + 9), Op::Read, Some(value)));
        }
        assert!(check(&Register, &history).is_ok());
    }
}
